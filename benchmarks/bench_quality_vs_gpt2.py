"""Quality for the compute, like for like: the project's best LSTM recipe against a GPT-2 of about the same size.

    python benchmarks/bench_quality_vs_gpt2.py                  # 25 minutes each, side by side (plus the GPT-2 sweep)
    python benchmarks/bench_quality_vs_gpt2.py --minutes 4 --sweep_minutes 2   # a short version
    python benchmarks/bench_quality_vs_gpt2.py --only lstm --minutes 4 --lstm_recipe my.json  # tune the recipe

Both models see the same data and the same tokenizer: tinyshakespeare split by lines contiguously (lines [0, 36000)
train, [36000, 38000) valid, [38000, 40000) test), the project's BPE tokenizer, and the same wall-clock budget of
training on one CPU thread each, run side by side in two processes (`--minutes`; the learning-rate schedule of both
runs on elapsed time, so each decays fully within its budget). Then:

- (a) LSTM: `recipes/tinyshakespeare.json`, the ready config that `scripts/train.py --config` takes (stateful
  truncated BPTT and the rest), trained by `run_training`, the same code as `scripts/train.py`.
- (b) `transformers.GPT2LMHeadModel` with about the LSTM's parameter count (n_embd and n_head fixed, n_layer
  chosen to match), trained by the stock Trainer with AdamW on shuffled blocks of `--gpt2_context` tokens, its
  learning rate picked by a short sweep (`--gpt2_lrs`, all run at once for `--sweep_minutes`) on validation
  perplexity.

Word-level perplexity (summed NLL / words, words = whitespace-separated tokens plus one per line end) on valid and
test is the headline; token-level perplexity is beside it. The LSTM scores each split as one stream with its state
carried; GPT-2 with a sliding window of its context, scoring the second half of each window.

Each run writes its own folder under `runs/bench_quality/`; the table and every number go to
`runs/bench_quality/results.json`.
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_RECIPE = REPO_ROOT / "recipes" / "tinyshakespeare.json"
TINYSHAKESPEARE = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"
SPLIT = {"train_lines": "0:36000", "validation_lines": "36000:38000", "test_lines": "38000:40000"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0, help="Training time budget of each model, in minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--lstm_recipe", type=Path, default=DEFAULT_RECIPE, help="The LSTM config (train.py flags)")
    parser.add_argument("--gpt2_lrs", default="5e-4,1e-3,2e-3", help="GPT-2 learning rates to sweep (comma-separated)")
    parser.add_argument("--sweep_minutes", type=float, default=3.0, help="Minutes per sweep run (0: no sweep)")
    parser.add_argument("--gpt2_lr", type=float, default=None, help="GPT-2 learning rate (skips the sweep)")
    parser.add_argument("--gpt2_context", type=int, default=128, help="GPT-2 context (and training block) length")
    parser.add_argument("--gpt2_n_embd", type=int, default=256, help="GPT-2 width (n_layer is matched to the LSTM)")
    parser.add_argument("--gpt2_n_head", type=int, default=4, help="GPT-2 attention heads")
    parser.add_argument("--gpt2_batch_size", type=int, default=32, help="GPT-2 blocks per batch")
    parser.add_argument("--gpt2_dropout", type=float, default=0.1, help="GPT-2 dropout (residual, embedding, attn)")
    parser.add_argument("--only", choices=["lstm", "gpt2"], default=None, help="Run only one of the two models")
    parser.add_argument("--output_dir", type=Path, default=REPO_ROOT / "runs" / "bench_quality", help="Run folders")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one run, from a JSON spec
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# One run (in its own process, so that each has its own thread and its own clock)


def lstm_arguments(recipe: dict, output_dir: Path, minutes: float, cache_dir: Path):
    from modeling_lstmlm.training import arguments_from_dict

    values = {
        "train_file": [str(TINYSHAKESPEARE)],
        **SPLIT,
        "num_train_epochs": 1000,  # the time budget stops training
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        **recipe,
        "output_dir": str(output_dir),
        "cache_dir": str(cache_dir),
        "max_train_minutes": minutes,
        "eval_strategy": "no",
        "save_strategy": "no",
    }
    return arguments_from_dict(values)


def run_lstm(spec: dict) -> dict:
    from modeling_lstmlm.training import run_training

    model_args, data_args, run_args, training_args = lstm_arguments(
        spec["recipe"], Path(spec["output_dir"]), spec["minutes"], Path(spec["cache_dir"])
    )
    results = run_training(model_args, data_args, training_args, run_args, default_tokenizer=REPO_ROOT / "tokenizer")
    return results


def gpt2_params(n_embd: int, n_layer: int, vocab: int, context: int) -> int:
    return vocab * n_embd + context * n_embd + n_layer * (12 * n_embd * n_embd + 13 * n_embd) + 2 * n_embd


def run_gpt2(spec: dict) -> dict:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, TrainingArguments, set_seed

    from modeling_lstmlm.data import DataSource, LMCollator, TokenBlocks, load_splits
    from modeling_lstmlm.evaluation import evaluate_split
    from modeling_lstmlm.training import LMTrainer

    set_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    source = DataSource(train_files=[str(TINYSHAKESPEARE)], **SPLIT)
    splits = load_splits(source, tokenizer, cache_dir=spec["cache_dir"])
    context = spec["context"]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        resid_pdrop=spec["dropout"],
        embd_pdrop=spec["dropout"],
        attn_pdrop=spec["dropout"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=1000,
        learning_rate=spec["lr"],
        optim="adamw_torch",
        weight_decay=0.1,
        adam_beta2=0.99,
        warmup_steps=100,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=50,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=TokenBlocks(splits["train"].input_ids, context),
        data_collator=LMCollator(),
        max_train_minutes=spec["minutes"],
    )
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    model.eval()
    results = {
        "train_steps": trainer.state.global_step,
        "train_seconds": seconds,
        "train_tokens": trainer.state.global_step * spec["batch_size"] * context,
        "num_parameters": model.num_parameters(),
    }
    with torch.no_grad():
        for name in ("validation", "test"):
            result = evaluate_split(model, splits[name], window=context, stride=context // 2)
            results.update(result.to_dict(prefix=f"{name}_"))
    trainer.save_model()
    Path(spec["output_dir"], "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    import torch
    from transformers.utils import logging

    torch.set_num_threads(spec["threads"])
    logging.set_verbosity_error()
    results = run_lstm(spec) if spec["kind"] == "lstm" else run_gpt2(spec)
    Path(spec["output_dir"]).mkdir(parents=True, exist_ok=True)
    Path(spec["output_dir"], "bench_result.json").write_text(json.dumps({"spec": spec, "results": results}, indent=2))


# ---------------------------------------------------------------------------------------------------------------------
# The side-by-side driver


def launch(spec: dict) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    Path(spec["output_dir"]).mkdir(parents=True, exist_ok=True)
    log = open(Path(spec["output_dir"]) / "log.txt", "w")  # noqa: SIM115 (closed when the process is collected)
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def run_side_by_side(specs: list[dict]) -> list[dict]:
    processes = [launch(spec) for spec in specs]
    outputs = []
    for spec, process in zip(specs, processes, strict=True):
        if process.wait() != 0:
            raise RuntimeError(f"{spec['name']} failed; see {Path(spec['output_dir']) / 'log.txt'}")
        outputs.append(json.loads((Path(spec["output_dir"]) / "bench_result.json").read_text())["results"])
    return outputs


def machine_facts(threads: int) -> dict:
    import torch
    import transformers
    from _generate_common import cpu_name

    return {
        "cpu": cpu_name(),
        "logical cores": os.cpu_count(),
        "torch threads per run": threads,
        "load average (1 min) at start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def lstm_parameter_count(recipe: dict) -> int:
    from transformers import AutoTokenizer

    from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    fields = set(LSTMLMConfig.__dataclass_fields__)
    config = LSTMLMConfig(vocab_size=len(tokenizer), **{k: v for k, v in recipe.items() if k in fields})
    return LSTMLMForCausalLM(config).num_parameters()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return {}
    facts = machine_facts(args.threads)
    recipe = json.loads(args.lstm_recipe.read_text())
    cache_dir = args.output_dir / "cache"
    lstm_params = lstm_parameter_count(recipe)
    vocab = 8192
    n_layer = min(
        range(1, 25), key=lambda n: abs(gpt2_params(args.gpt2_n_embd, n, vocab, args.gpt2_context) - lstm_params)
    )
    gpt2_common = {
        "kind": "gpt2",
        "threads": args.threads,
        "cache_dir": str(cache_dir),
        "context": args.gpt2_context,
        "n_embd": args.gpt2_n_embd,
        "n_head": args.gpt2_n_head,
        "n_layer": n_layer,
        "batch_size": args.gpt2_batch_size,
        "dropout": args.gpt2_dropout,
    }
    print("Machine: " + ", ".join(f"{k}: {v}" for k, v in facts.items()), flush=True)

    # 1. GPT-2 learning-rate sweep (short runs, all at once), unless a rate is given.
    sweep = {}
    gpt2_lr = args.gpt2_lr
    if args.only != "lstm" and gpt2_lr is None:
        lrs = [float(x) for x in args.gpt2_lrs.split(",")]
        if args.sweep_minutes > 0 and len(lrs) > 1:
            # All sweep runs at once, so that each gets the same share of the machine (a run alone would see more
            # tokens in its minutes than a pair).
            specs = [
                {
                    **gpt2_common,
                    "name": f"gpt2 sweep lr={lr:g}",
                    "lr": lr,
                    "minutes": args.sweep_minutes,
                    "output_dir": str(args.output_dir / f"gpt2_sweep_lr{lr:g}"),
                }
                for lr in lrs
            ]
            names = ", ".join(spec["name"] for spec in specs)
            print(f"Sweep: {names} ({args.sweep_minutes} min, all at once)", flush=True)
            for spec, result in zip(specs, run_side_by_side(specs), strict=True):
                sweep[spec["lr"]] = result["validation_word_perplexity"]
            gpt2_lr = min(sweep, key=sweep.get)
        else:
            gpt2_lr = lrs[0]

    # 2. The two models side by side, the same budget each.
    specs = []
    if args.only != "gpt2":
        specs.append(
            {"kind": "lstm", "name": f"LSTM ({args.lstm_recipe.name})", "recipe": recipe, "minutes": args.minutes,
             "threads": args.threads, "cache_dir": str(cache_dir), "output_dir": str(args.output_dir / "lstm")}
        )  # fmt: skip
    if args.only != "lstm":
        specs.append(
            {**gpt2_common, "name": f"GPT-2 (AdamW lr={gpt2_lr:g}, ctx {args.gpt2_context})", "lr": gpt2_lr,
             "minutes": args.minutes, "output_dir": str(args.output_dir / "gpt2")}
        )  # fmt: skip
    print(f"Training {' and '.join(spec['name'] for spec in specs)}: {args.minutes} min each, side by side", flush=True)
    outputs = run_side_by_side(specs)

    rows = []
    for spec, result in zip(specs, outputs, strict=True):
        rows.append({"model": spec["name"], **result})
    print()
    print(f"Data: tinyshakespeare lines {SPLIT}; tokenizer: tokenizer/ (BPE {vocab}); {args.minutes} min of training "
          f"on {args.threads} thread(s) each, side by side")  # fmt: skip
    if sweep:
        print("GPT-2 sweep (valid word ppl after " + f"{args.sweep_minutes} min): "
              + ", ".join(f"lr {lr:g}: {ppl:.1f}" for lr, ppl in sweep.items()))  # fmt: skip
    header = f"| {'model':<44} | {'params':>9} | {'tokens seen':>11} | {'valid word ppl':>14} | {'test word ppl':>13} |"
    header += f" {'valid tok ppl':>13} | {'test tok ppl':>12} |"
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row['model']:<44} | {row['num_parameters'] / 1e6:>8.2f}M | {row['train_tokens']:>11,} | "
            f"{row['validation_word_perplexity']:>14.1f} | {row['test_word_perplexity']:>13.1f} | "
            f"{row['validation_token_perplexity']:>13.2f} | {row['test_token_perplexity']:>12.2f} |"
        )
    summary = {"machine": facts, "arguments": vars(args), "gpt2_sweep": sweep, "rows": rows}
    if len(rows) == 2:
        ratio = rows[0]["test_word_perplexity"] / rows[1]["test_word_perplexity"]
        summary["lstm_over_gpt2_test_word_ppl"] = ratio
        print(f"\nLSTM test word ppl / GPT-2 test word ppl = {ratio:.3f} ({(1 - ratio) * 100:.1f}% lower; goal >= 20%)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
