"""Machine translation on Multi30k (En->De, En->Fr): the LSTM as a decoder-only translator against a same-size GPT-2
trained the same way and a same-size transformer encoder-decoder, side by side.

    python benchmarks/bench_translation.py --pair en-de --minutes 60 --data_dir ../shared/data/multi30k \
        --output_dir runs/mt-en-de
    python benchmarks/bench_translation.py --pair en-fr --minutes 60 --dataset_name YOUR/multi30k-copy \
        --output_dir runs/mt-en-fr          # a Hub copy with `en`, `de`, `fr` columns
    python benchmarks/bench_translation.py --smoke --output_dir /tmp/mt-smoke   # tiny models and data, seconds

Data: `train` to train on, `val` for the validation loss, `test_2016_flickr` for the scores (`{split}.{lang}` files
in `--data_dir`, one sentence a line; Multi30k is for non-commercial research and is not bundled). A byte-level
BPE tokenizer (`--vocab_size`) is trained on the training pairs (both sides) with the project's `train_tokenizer`.

Systems (`modeling_lstmlm.translation`), each trained from scratch for `--minutes` of wall time with `--threads`
torch threads, in three processes at once, batches of `--batch_size` pairs, the learning-rate schedule decaying on
elapsed time:

- `lstm`: `LSTMLMForCausalLM` (`--lstm_hidden_size`, `--lstm_embedding_size`, `--lstm_layers`) on
  `<bos> source <sep> target <eos>`, the loss on the target and its `<eos>` only (labels -100 on the rest), the
  source tokens reversed (`--no-lstm_reverse_source` keeps their order), no dropout (`--lstm_dropout`,
  `--lstm_weight_dropout`, `--lstm_embedding_dropout`; these defaults won on the validation loss);
- `gpt2`: `GPT2LMHeadModel` trained the same way, `--gpt2_n_embd` wide, with the number of blocks that comes
  closest to the LSTM's parameter count;
- `encoder_decoder`: a `MarianMTModel` configuration (`--ed_d_model`, feed-forward 4x, shared tied embeddings) with
  the number of encoder and decoder layers (equal) that comes closest to the LSTM's parameter count.

Test translations by beam search (`--num_beams`), decoded to plain text; scored with sacreBLEU (default settings:
cased, 13a tokenization on the detokenized output) and chrF. Writes `output_dir/results.json` (`bleu` and `chrf`
per system under `lstm`, `gpt2`, `encoder_decoder`, plus steps, seconds, parameters, validation loss and CPU time)
and `output_dir/<system>.hyp.txt`, one line per test sentence.
"""

import argparse
import functools
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

SYSTEMS = ("lstm", "gpt2", "encoder_decoder")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="en-de", help="source-target language codes, e.g. en-de or en-fr")
    p.add_argument("--data_dir", type=Path, default=None, help="Folder of {train,val,test_2016_flickr}.{lang} files.")
    p.add_argument("--dataset_name", default=None, help="A Hub dataset with one column per language code.")
    p.add_argument("--dataset_config_name", default=None)
    p.add_argument("--minutes", type=float, default=60.0, help="Training minutes of each system.")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="Comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--vocab_size", type=int, default=8192, help="BPE vocabulary trained on the training pairs.")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--max_test_sentences", type=int, default=None, help="Score only the first N test sentences.")
    p.add_argument("--lstm_hidden_size", type=int, default=512)
    p.add_argument("--lstm_embedding_size", type=int, default=256)
    p.add_argument("--lstm_layers", type=int, default=2)
    p.add_argument("--lstm_lr", type=float, default=3e-3)
    # The LSTM's defaults: the best validation loss of four 50-minute en-de runs (docs/applications.md).
    p.add_argument("--lstm_dropout", type=float, default=0.0, help="The LSTM's hidden and output dropout.")
    p.add_argument("--lstm_weight_dropout", type=float, default=0.0, help="DropConnect on the recurrent weights.")
    p.add_argument("--lstm_embedding_dropout", type=float, default=0.0)
    p.add_argument(
        "--lstm_reverse_source",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Feed the LSTM the source tokens in reverse order (Sutskever et al. 2014), in training and translation.",
    )
    p.add_argument("--gpt2_n_embd", type=int, default=256)
    p.add_argument("--gpt2_n_head", type=int, default=4)
    p.add_argument("--gpt2_lr", type=float, default=1e-3)
    p.add_argument("--ed_d_model", type=int, default=256)
    p.add_argument("--ed_heads", type=int, default=4)
    p.add_argument("--ed_lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each system's process.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", type=Path, default=REPO_ROOT / "runs" / "bench_translation")
    p.add_argument("--smoke", action="store_true", help="Tiny models on built number-word pairs, a few steps.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.source_lang, args.target_lang = args.pair.split("-")
    except ValueError:
        p.error(f"--pair must look like en-de, got {args.pair!r}")
    args.system_list = [s for s in args.systems.split(",") if s.strip()]
    if any(s not in SYSTEMS for s in args.system_list):
        p.error(f"--systems must be a subset of {SYSTEMS}, got {args.systems!r}")
    if args.smoke:
        args.lstm_hidden_size, args.lstm_embedding_size, args.gpt2_n_embd, args.ed_d_model = 32, 16, 16, 16
        args.gpt2_n_head = args.ed_heads = 2
        args.vocab_size, args.max_test_sentences, args.num_beams = 300, 6, 2
    elif args.worker is None and (args.data_dir is None) == (args.dataset_name is None):
        p.error("Give --data_dir (aligned text files) or --dataset_name (a Hub dataset), or --smoke")
    return args


def load_pairs(args) -> dict[str, list[tuple[str, str]]]:
    from modeling_lstmlm.translation import load_parallel_splits

    if args.smoke:  # built data: English number words -> French ones
        from modeling_lstmlm.sft import english_number, french_number

        pairs = [(english_number(n), french_number(n)) for n in range(120)]
        return {"train": pairs[:100], "validation": pairs[100:110], "test": pairs[110:]}
    return load_parallel_splits(
        args.source_lang,
        args.target_lang,
        data_dir=args.data_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
    )


# ---------------------------------------------------------------------------------------------------------------------
# One system (in its own process)


def build_models(spec: dict, tokenizer) -> dict:
    """The LSTM, and the peers sized to its parameter count; returns {system: model} for the asked system only."""
    from transformers import GPT2Config, GPT2LMHeadModel, MarianConfig, MarianMTModel, set_seed

    from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

    set_seed(spec["seed"])
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    lstm = LSTMLMForCausalLM(
        LSTMLMConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec["lstm_hidden_size"],
            embedding_size=spec["lstm_embedding_size"],
            num_hidden_layers=spec["lstm_layers"],
            embedding_dropout=spec["lstm_embedding_dropout"],
            hidden_dropout=spec["lstm_dropout"],
            output_dropout=spec["lstm_dropout"],
            weight_dropout=spec["lstm_weight_dropout"],
            variational_dropout=True,
            **ids,
        )
    )
    target = lstm.num_parameters()
    if spec["system"] == "lstm":
        return lstm

    def closest(make):
        best = None
        for n in range(1, 16):
            model = make(n)
            if best is None or abs(model.num_parameters() - target) < abs(best.num_parameters() - target):
                best = model
        set_seed(spec["seed"])
        return make(best_layers(best))

    def best_layers(model):
        config = model.config
        return getattr(config, "n_layer", None) or config.encoder_layers

    if spec["system"] == "gpt2":
        return closest(
            lambda n: GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=len(tokenizer),
                    n_positions=256,
                    n_embd=spec["gpt2_n_embd"],
                    n_layer=n,
                    n_head=spec["gpt2_n_head"],
                    **ids,
                )
            )
        )
    d = spec["ed_d_model"]
    return closest(
        lambda n: MarianMTModel(
            MarianConfig(
                vocab_size=len(tokenizer),
                d_model=d,
                encoder_layers=n,
                decoder_layers=n,
                encoder_attention_heads=spec["ed_heads"],
                decoder_attention_heads=spec["ed_heads"],
                encoder_ffn_dim=4 * d,
                decoder_ffn_dim=4 * d,
                max_position_embeddings=256,
                dropout=0.1,
                share_encoder_decoder_embeddings=True,
                tie_word_embeddings=True,
                decoder_start_token_id=tokenizer.pad_token_id,
                forced_eos_token_id=None,
                **ids,
            )
        )
    )


def run_system(spec: dict) -> dict:
    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

    from modeling_lstmlm.training import LMTrainer
    from modeling_lstmlm.translation import (
        DecoderOnlyCollator,
        encode_decoder_only,
        encode_seq2seq,
        score_translations,
        translate,
    )

    system, out = spec["system"], Path(spec["output_dir"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    pairs = spec["pairs"]
    model = build_models(spec, tokenizer)
    seq2seq = system == "encoder_decoder"
    reverse = system == "lstm" and spec["lstm_reverse_source"]
    encode = encode_seq2seq if seq2seq else functools.partial(encode_decoder_only, reverse_source=reverse)
    train = [encode(tokenizer, s, t) for s, t in pairs["train"]]
    valid = [encode(tokenizer, s, t) for s, t in pairs["validation"]]
    if seq2seq:
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    else:
        collator = DecoderOnlyCollator(tokenizer.pad_token_id)
    lr = {"lstm": spec["lstm_lr"], "gpt2": spec["gpt2_lr"], "encoder_decoder": spec["ed_lr"]}[system]
    args = TrainingArguments(
        output_dir=str(out / system),
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["batch_size"],
        num_train_epochs=1000 if not spec["smoke"] else 1,
        max_steps=3 if spec["smoke"] else -1,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=0 if spec["smoke"] else 200,
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=50,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=spec["seed"],
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        max_train_minutes=None if spec["smoke"] else spec["minutes"],
    )
    start = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - start
    validation_loss = trainer.evaluate(valid)["eval_loss"]
    trainer.save_model(str(out / system))

    sources = [s for s, _ in pairs["test"]]
    references = [t for _, t in pairs["test"]]
    start = time.monotonic()
    hypotheses = translate(
        model, tokenizer, sources, num_beams=spec["num_beams"], batch_size=16, reverse_source=reverse
    )
    decode_seconds = time.monotonic() - start
    (out / f"{system}.hyp.txt").write_text("\n".join(h.replace("\n", " ") for h in hypotheses) + "\n", encoding="utf-8")
    scores = score_translations(hypotheses, references)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        **scores,
        "num_parameters": model.num_parameters(),
        "train_steps": trainer.state.global_step,
        "train_seconds": train_seconds,
        "train_pairs_seen": trainer.state.global_step * spec["batch_size"],
        "validation_loss": validation_loss,
        "decode_seconds": decode_seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    (out / f"{system}.result.json").write_text(json.dumps(result, indent=2))
    return result


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch
    from transformers.utils import logging

    torch.set_num_threads(spec["threads"])
    logging.set_verbosity_error()
    run_system(spec)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    from modeling_lstmlm.tokenization import save_tokenizer, train_tokenizer

    start = time.monotonic()
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(args)
    if args.max_test_sentences:
        pairs["test"] = pairs["test"][: args.max_test_sentences]
    print(", ".join(f"{split} {len(p)}" for split, p in pairs.items()) + f" pairs ({args.pair})")

    corpus = out / "tokenizer_corpus"
    corpus.mkdir(exist_ok=True)
    for side, index in ((args.source_lang, 0), (args.target_lang, 1)):
        (corpus / f"train.{side}").write_text("\n".join(p[index] for p in pairs["train"]) + "\n", encoding="utf-8")
    tokenizer = train_tokenizer(sorted(corpus.iterdir()), vocab_size=args.vocab_size)
    save_tokenizer(tokenizer, out / "tokenizer")

    spec = {k: v for k, v in vars(args).items() if k not in ("data_dir", "output_dir", "worker")}
    spec.update(output_dir=str(out), tokenizer_dir=str(out / "tokenizer"), pairs=pairs)
    processes = {}
    for system in args.system_list:
        (out / system).mkdir(exist_ok=True)
        spec_path = out / system / "spec.json"
        spec_path.write_text(json.dumps({**spec, "system": system}))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        log = open(out / system / "log.txt", "w")  # noqa: SIM115 (closed with the process)
        processes[system] = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(spec_path)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    results, failed = {}, []
    for system, process in processes.items():
        if process.wait() != 0:
            failed.append(system)
            continue
        results[system] = json.loads((out / f"{system}.result.json").read_text())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    output = {
        **results,
        "pair": args.pair,
        "test_sentences": len(pairs["test"]),
        "cpu_seconds_all": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
        "wall_seconds": time.monotonic() - start,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (out / "results.json").write_text(json.dumps(output, indent=2) + "\n")
    print(f"\n{args.pair}, {len(pairs['test'])} test sentences, beam {args.num_beams}")
    print(f"{'system':<16} {'params':>9} {'steps':>7} {'val loss':>9} {'BLEU':>6} {'chrF':>6}")
    for system, r in results.items():
        print(
            f"{system:<16} {r['num_parameters']:9d} {r['train_steps']:7d} {r['validation_loss']:9.3f} "
            f"{r['bleu']:6.2f} {r['chrf']:6.2f}"
        )
    print(f"\nCPU time {output['cpu_seconds_all'] / 60:.1f} min, wall {output['wall_seconds'] / 60:.1f} min")
    if failed:
        logs = ", ".join(str(out / s / "log.txt") for s in failed)
        raise SystemExit(f"{', '.join(failed)} failed; see {logs}")


if __name__ == "__main__":
    main()
