"""Supervised fine-tuning for chat, instructions and translation with the stock `Trainer`.

The loss is on the assistant's tokens only (prompt tokens are labelled -100); batches are padded per batch, or packed
into blocks with `--packing`. Data: JSON/JSONL/CSV files or a Hub dataset with
- `--task chat`: a `messages` column (lists of {"role", "content"}) or `prompt` / `response` columns;
- `--task translation`: `--source_column` / `--target_column` (a dotted name reads a nested field), rendered as
  "{instruction}\\n{source}" -> target; BLEU and chrF (sacrebleu) on the held-out split, before and after.
Without data, the built-in demos: chat = pairs of consecutive tiny-shakespeare speeches (user speaks, the assistant
answers with the next speech), translation = English -> French number words (0..999; held-out numbers).

The saved folder has a generation config that stops at <|end|> (and <|endoftext|>), ready for scripts/chat.py.

    python scripts/finetune_chat.py --model_name_or_path runs/lm --output_dir runs/chat
    python scripts/finetune_chat.py --model_name_or_path runs/lm --task translation --output_dir runs/translate
    python scripts/finetune_chat.py --model_name_or_path runs/lm --task translation \\
        --dataset_name Helsinki-NLP/opus_books --dataset_config_name en-fr \\
        --source_column translation.en --target_column translation.fr \\
        --instruction "Translate from English to French:" --output_dir runs/opus
    python scripts/finetune_chat.py --smoke
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed  # noqa: E402

from lstmlm.commands._common import max_steps_cap  # noqa: E402
from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM  # noqa: E402
from modeling_lstmlm.data import parse_line_range  # noqa: E402
from modeling_lstmlm.sft import (  # noqa: E402
    DEFAULT_TRANSLATION_INSTRUCTION,
    generate_replies,
    load_sft_dataset,
    number_translation_pairs,
    pack_examples,
    parallel_text_dataset,
    run_sft,
    shakespeare_dialogues,
    to_messages,
    tokenize_sft_dataset,
    translation_metrics,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", help="A saved causal-LM folder to fine-tune.")
    p.add_argument(
        "--tokenizer_name_or_path",
        help="Tokenizer folder (default: the model folder if it holds one, else the repository's tokenizer/).",
    )
    p.add_argument("--output_dir", default="runs/chat", help="Where the fine-tuned model and results.json go.")
    p.add_argument("--task", choices=["chat", "translation"], default="chat", help="What the rows hold.")
    p.add_argument("--train_file", help="JSON/JSONL/CSV training file.")
    p.add_argument("--validation_file", help="Validation file (default: held out from the training file).")
    p.add_argument(
        "--parallel_files",
        nargs=2,
        metavar=("SOURCE", "TARGET"),
        help="Task translation: two aligned plain-text files, one sentence a line (e.g. Multi30k train.en train.de).",
    )
    p.add_argument(
        "--validation_parallel_files",
        nargs=2,
        metavar=("SOURCE", "TARGET"),
        help="Aligned validation files (default: held out from --parallel_files).",
    )
    p.add_argument("--dataset_name", help="A Hub dataset (or local dataset folder) read with datasets.load_dataset.")
    p.add_argument("--dataset_config_name", help="The Hub dataset's configuration name (e.g. en-fr).")
    p.add_argument("--validation_split_name", default="validation", help="The Hub split used for evaluation.")
    p.add_argument("--held_out_fraction", type=float, default=0.1, help="Share of train held out without a split.")
    p.add_argument("--max_train_examples", type=int, help="Use at most this many training rows.")
    p.add_argument("--messages_column", default="messages", help="Column of chat message lists (task chat).")
    p.add_argument("--prompt_column", default="prompt", help="Prompt column (task chat, without messages).")
    p.add_argument("--response_column", default="response", help="Response column (task chat, without messages).")
    p.add_argument("--source_column", default="source", help="Source-text column (task translation).")
    p.add_argument("--target_column", default="target", help="Target-text column (task translation).")
    p.add_argument("--instruction", default=DEFAULT_TRANSLATION_INSTRUCTION, help="Line put before each source.")
    p.add_argument("--system_prompt", help="A system message put first in every conversation.")
    p.add_argument(
        "--demo_lines",
        default="36000:40000",
        help="Line range 'start:end' of tiny-shakespeare for the built-in chat demo (outside the LM's pretraining).",
    )
    p.add_argument("--demo_file", default=str(REPO_ROOT / "data/tinyshakespeare/input.txt"), help="Chat demo text.")
    p.add_argument("--packing", action="store_true", help="Pack examples into blocks instead of padding each one.")
    p.add_argument("--block_size", type=int, default=256, help="Block length in tokens with --packing.")
    p.add_argument("--max_length", type=int, default=512, help="Truncate each conversation to this many tokens.")
    p.add_argument("--num_train_epochs", type=float, default=3, help="Training epochs.")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate (linear decay).")
    p.add_argument("--warmup_ratio", type=float, default=0.05, help="Share of the steps spent warming up.")
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay.")
    p.add_argument("--max_grad_norm", type=float, default=0.25, help="Gradient clipping norm.")
    p.add_argument("--batch_size", type=int, default=16, help="Training and evaluation batch size.")
    p.add_argument("--max_new_tokens", type=int, default=48, help="Longest generated reply in the evaluation.")
    p.add_argument("--num_eval_generations", type=int, default=200, help="Held-out rows translated for BLEU/chrF.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the split and of training.")
    p.add_argument("--smoke", action="store_true", help="A tiny random model on a few rows (seconds).")
    args = p.parse_args(argv)
    if args.smoke:
        args.demo_lines = "39000:40000"
        args.num_train_epochs, args.max_length, args.block_size, args.batch_size = 1, 64, 32, 8
        args.max_new_tokens, args.num_eval_generations = 8, 8
        args.max_train_examples = args.max_train_examples or 48
    elif args.model_name_or_path is None:
        p.error("--model_name_or_path is required (except with --smoke)")
    if args.parallel_files and (args.task != "translation" or args.train_file or args.dataset_name):
        p.error("--parallel_files needs --task translation and excludes --train_file / --dataset_name")
    return args


def load_data(args):
    if args.parallel_files:
        return parallel_text_dataset(
            args.parallel_files,
            args.validation_parallel_files,
            held_out_fraction=args.held_out_fraction,
            seed=args.seed,
        )
    if args.train_file or args.dataset_name:
        return load_sft_dataset(
            train_file=args.train_file,
            validation_file=args.validation_file,
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            validation_split_name=args.validation_split_name,
            held_out_fraction=args.held_out_fraction,
            seed=args.seed,
        )
    if args.task == "translation":
        pairs = number_translation_pairs(range(1000))
        parts = pairs.train_test_split(test_size=0.1, seed=args.seed)
        return {"train": parts["train"], "validation": parts["test"]}
    start, end = parse_line_range(args.demo_lines)
    return shakespeare_dialogues(args.demo_file, line_range=(start, None if end == -1 else end), seed=args.seed)


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    set_seed(args.seed)

    model_dir = Path(args.model_name_or_path or "")
    tokenizer_name = args.tokenizer_name_or_path or (
        str(model_dir)
        if args.model_name_or_path and (model_dir / "tokenizer_config.json").is_file()
        else str(REPO_ROOT / "tokenizer")
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    if args.model_name_or_path is None:  # --smoke without a model: a tiny random one
        model = LSTMLMForCausalLM(LSTMLMConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1))
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)

    data = load_data(args)
    train, validation = data["train"], data["validation"]
    if args.max_train_examples is not None:
        train = train.select(range(min(args.max_train_examples, len(train))))
    if args.smoke:
        validation = validation.select(range(min(12, len(validation))))
    message_kwargs = dict(
        task=args.task,
        messages_column=args.messages_column,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        source_column=args.source_column,
        target_column=args.target_column,
        system_prompt=args.system_prompt,
        instruction=args.instruction,
    )
    train_tokens = tokenize_sft_dataset(train, tokenizer, args.max_length, "Tokenizing train", **message_kwargs)
    eval_tokens = tokenize_sft_dataset(
        validation, tokenizer, args.max_length, "Tokenizing validation", **message_kwargs
    )
    if args.packing:
        train_tokens = pack_examples(train_tokens, args.block_size, separator_id=tokenizer.eos_token_id)
    print(f"train: {len(train)} rows -> {len(train_tokens)} sequences; validation: {len(eval_tokens)} rows")

    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.num_train_epochs,
        max_steps=max_steps_cap(),  # -1 unless $LSTMLM_MAX_STEPS caps it
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_ratio,  # a float < 1 is a share of the steps
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        per_device_train_batch_size=args.batch_size,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )

    results = {}
    rows = list(validation)[: args.num_eval_generations]
    if args.task == "translation":
        prompts = [to_messages({**row, args.target_column: None}, **message_kwargs) for row in rows]
        references = [to_messages(row, **message_kwargs)[-1]["content"] for row in rows]
        before = generate_replies(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        results["translation_before"] = translation_metrics(before, references)
    results.update(run_sft(model, tokenizer, train_tokens, eval_tokens, training_args, args.batch_size))
    samples = []
    if args.task == "translation":
        after = generate_replies(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        results["translation_after"] = translation_metrics(after, references)
        samples = [
            {"source": p[-1]["content"], "reference": r, "before": b, "after": a}
            for p, r, b, a in zip(prompts, references, before, after, strict=True)
        ]
    else:
        conversations = [to_messages(row, **message_kwargs) for row in rows[:20]]
        # Each prompt is the conversation up to its first assistant turn.
        prompts = [c[: next(i for i, m in enumerate(c) if m["role"] == "assistant")] for c in conversations]
        replies = generate_replies(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        samples = [{"prompt": p[-1]["content"], "reply": r} for p, r in zip(prompts, replies, strict=True)]

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(output_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")

    b, a = results["before"], results["after"]
    print(
        f"\nheld-out assistant tokens ({a['tokens']}): loss {b['loss']:.3f} -> {a['loss']:.3f}, "
        f"perplexity {b['perplexity']:.1f} -> {a['perplexity']:.1f}"
    )
    if args.task == "translation":
        tb, ta = results["translation_before"], results["translation_after"]
        print(
            f"{len(rows)} held-out translations: BLEU {tb['bleu']:.1f} -> {ta['bleu']:.1f}, "
            f"chrF {tb['chrf']:.1f} -> {ta['chrf']:.1f}, exact {tb['exact_match']:.2f} -> {ta['exact_match']:.2f}"
        )
    for sample in samples[:3]:
        print(json.dumps(sample, ensure_ascii=False))
    print(f"\nSaved to {output_dir} (model, tokenizer, results.json, samples.jsonl, args.json)")


if __name__ == "__main__":
    main()
