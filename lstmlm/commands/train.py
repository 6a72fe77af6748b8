"""Pretrain or fine-tune an LSTM language model with the stock `transformers.Trainer`.

    python scripts/train.py --smoke                                   # tiny model, a few steps (what CI runs)
    python scripts/train.py --config recipes/tinyshakespeare.json     # the best recipe on the bundled split
    python scripts/train.py --train_file my.txt --output_dir runs/mine --num_train_epochs 3 --stateful
    python scripts/train.py --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --rows_are_lines
    python scripts/train.py --model_name_or_path runs/demo --train_file more.txt --output_dir runs/ft  # fine-tune
    torchrun --nproc_per_node 2 scripts/train.py --smoke                # DDP (gloo on CPU)

Every flag of `transformers.TrainingArguments` works (`--learning_rate`, `--optim sgd`, `--max_grad_norm`,
`--gradient_accumulation_steps`, `--resume_from_checkpoint PATH|last`, ...); `--help` lists this script's own flags
and the common Trainer ones, `--help_all` all of them. `--config FILE.json` sets defaults for
any flag (flags given on the command line win). Without any data flag, the bundled tinyshakespeare is used, split
by lines into [0, 36000) train, [36000, 38000) validation and [38000, 40000) test.

The output folder holds the model, tokenizer and generation config (loadable with the Auto classes),
`run_args.json` (every resolved argument), `eval_results.json` (token- and word-level perplexity on validation and
test) and `loss_curve.png`.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from lstmlm.commands._common import TINYSHAKESPEARE, HelpFormatter, check_model_path, max_steps_cap
from modeling_lstmlm._extras import require
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer
from modeling_lstmlm.training import DataArguments, ModelArguments, RunArguments, run_training

DEFAULT_DATA = {
    "train_file": [str(TINYSHAKESPEARE)],
    "train_lines": "0:36000",
    "validation_lines": "36000:38000",
    "test_lines": "38000:40000",
}
# Script defaults that differ from TrainingArguments' own.
DEFAULTS = {
    "output_dir": "runs/train",
    "learning_rate": 2e-3,
    "max_grad_norm": 0.25,
    "logging_steps": 50,
    "eval_strategy": "steps",
    "eval_steps": 500,
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
    "disable_tqdm": False,
    # On a machine without an accelerator, say so: only then does torchrun's CPU DDP (gloo) start (transformers 5.24).
    "use_cpu": not torch.accelerator.is_available(),
    "ddp_find_unused_parameters": False,  # every parameter is used in every step
}
# A tiny model for a few steps on a slice of tinyshakespeare: seconds on a laptop CPU.
SMOKE = {
    **DEFAULT_DATA,
    "train_lines": "0:600",
    "validation_lines": "600:700",
    "test_lines": "700:800",
    "output_dir": "runs/smoke",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "block_size": 16,
    "stateful": True,
    "eval_window": 64,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "max_steps": 8,
    "learning_rate": 3e-3,
    "logging_steps": 2,
    "eval_steps": 4,
    "save_strategy": "no",
}


# The TrainingArguments flags that `--help` lists (all of them work; `--help_all` lists every one).
COMMON_TRAINER_FLAGS = {
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "seed",
    "logging_steps",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "use_cpu",
    "bf16",
    "report_to",
}


@dataclass
class ScriptArguments:
    config: str | None = field(
        default=None, metadata={"help": "A JSON file of flag defaults (e.g. recipes/tinyshakespeare.json)."}
    )
    smoke: bool = field(default=False, metadata={"help": "Tiny model, a few steps on a slice of tinyshakespeare."})


def make_parser(help_all: bool = True) -> HfArgumentParser:
    """The parser of every flag; with `help_all=False` its help lists only this script's flags and the common Trainer
    ones (the others still parse)."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, RunArguments, TrainingArguments, ScriptArguments),
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--help_all", action="help", help="show every flag, all TrainingArguments included, and exit")
    if not help_all:
        hidden = {f.name for f in fields(TrainingArguments)} - COMMON_TRAINER_FLAGS
        own = (ModelArguments, DataArguments, RunArguments, ScriptArguments)
        hidden -= {f.name for cls in own for f in fields(cls)}
        for action in parser._actions:
            if action.dest in hidden:
                action.help = argparse.SUPPRESS
        parser.epilog = (
            f"{len(hidden)} more transformers.TrainingArguments flags are accepted and not listed here: "
            "--help_all lists them all."
        )
    return parser


def parse_args(argv: list[str] | None = None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--smoke", nargs="?", const="true", default="false")
    known, _ = pre.parse_known_args(argv)

    args = sys.argv[1:] if argv is None else argv
    parser = make_parser(help_all="--help_all" in args)
    defaults = dict(DEFAULTS)
    if known.smoke.lower() in ("true", "1", "yes"):
        defaults.update(SMOKE)
    if known.config is not None:
        recipe = json.loads(Path(known.config).read_text())
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(recipe) - valid)
        if unknown:
            raise ValueError(f"{known.config} sets unknown arguments: {unknown}")
        defaults.update(recipe)
    parser.set_defaults(**defaults)
    if not {"-h", "--help", "--help_all"} & set(args):
        # TrainingArguments sets up its device (which needs accelerate) while the flags are parsed.
        require("accelerate", "train", "Training with the Trainer")
    model_args, data_args, run_args, training_args, script_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.max_steps = max_steps_cap(training_args.max_steps)
    check_model_path(model_args.model_name_or_path, "--model_name_or_path")
    check_model_path(model_args.tokenizer_name, "--tokenizer_name")
    if data_args.train_file is None and data_args.dataset_name is None:
        for name, value in DEFAULT_DATA.items():
            setattr(data_args, name, value)
    return model_args, data_args, run_args, training_args, script_args


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, run_args, training_args, script_args = parse_args(argv)
    results = run_training(
        model_args, data_args, training_args, run_args, default_tokenizer=packaged_tokenizer(), report=print
    )
    if training_args.process_index == 0:
        print(f"\nRun folder: {training_args.output_dir}")
        print(f"{'split':<12}{'loss':>10}{'token ppl':>12}{'word ppl':>12}")
        for split in ("validation", "test"):
            if f"{split}_loss" in results:
                print(
                    f"{split:<12}{results[f'{split}_loss']:>10.4f}{results[f'{split}_token_perplexity']:>12.2f}"
                    f"{results[f'{split}_word_perplexity']:>12.2f}"
                )
        print(f"trained {results['train_steps']} steps in {results['train_seconds']:.1f}s")
    return results


if __name__ == "__main__":
    main()
