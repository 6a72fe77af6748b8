"""The whole story in one command: tokenizer, a few minutes of training, held-out perplexity and a sample.

    python scripts/demo.py                  # 1000 steps on the bundled tinyshakespeare split (a few minutes)
    python scripts/demo.py --max_steps 3000 # longer: lower perplexity
    python scripts/demo.py --minutes 10     # a time budget instead (the result then depends on the machine's speed)
    python scripts/demo.py --smoke          # seconds: a tiny model, to check that everything runs

The default run is a fixed number of steps with a fixed seed, so a busy machine prints the same perplexities and the
same sample as an idle one (on the same torch build and thread count), only later.

1. trains the tokenizer with `scripts/train_tokenizer.py` if `tokenizer/` is missing;
2. trains an LSTM language model with the best recipe (`recipes/tinyshakespeare.json`: stateful truncated BPTT,
   AWD-LSTM dropouts, tied weights) on tinyshakespeare lines [0, 36000) for `--max_steps` steps (or `--minutes`);
3. prints token- and word-level perplexity on the held-out lines [36000, 38000) (valid) and [38000, 40000) (test);
4. generates a sample from a prompt.

Everything goes to `runs/demo` (or `--output_dir`): the model, tokenizer and generation config (load them with
`AutoModelForCausalLM` / `AutoTokenizer`), `run_args.json`, `eval_results.json`, `loss_curve.png`, `sample.txt` and
`demo.json`. Nothing is downloaded.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402

from modeling_lstmlm.training import arguments_from_dict, run_training  # noqa: E402

TOKENIZER_DIR = REPO_ROOT / "tokenizer"
RECIPE = REPO_ROOT / "recipes" / "tinyshakespeare.json"
DATA = {
    "train_file": [str(REPO_ROOT / "data" / "tinyshakespeare" / "input.txt")],
    "train_lines": "0:36000",
    "validation_lines": "36000:38000",
    "test_lines": "38000:40000",
}
# The speed the expected duration is computed from: the recipe's model made 1000 steps in 8.5 min (five evaluations
# included) on the 2 otherwise idle cores of an AMD EPYC Milan (2026-11-29); set-up, tokenizing, scoring both splits,
# saving and the sample took about 1 more minute (the whole `bash scripts/run_demo.sh`: 9 min 35 s).
STEPS_PER_MINUTE = 1000 / 8.5
SMOKE = {
    "hidden_size": 32,
    "embedding_size": 32,
    "train_lines": "0:600",
    "validation_lines": "600:700",
    "test_lines": "700:800",
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "block_size": 16,
    "warmup_steps": 0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_steps", type=int, default=1000, help="Optimizer steps (20 x 35 tokens each)")
    parser.add_argument(
        "--minutes", type=float, default=None, help="A training time budget instead of --max_steps (machine-dependent)"
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="The training recipe (train.py flags as JSON)")
    parser.add_argument("--output_dir", type=Path, default=Path("runs/demo"), help="Where everything is written")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--prompt", default="ROMEO:", help="Prompt of the generated sample")
    parser.add_argument("--max_new_tokens", type=int, default=120, help="Length of the sample in tokens")
    parser.add_argument("--temperature", type=float, default=0.8, help="Sampling temperature of the sample")
    parser.add_argument("--top_p", type=float, default=0.9, help="Nucleus sampling mass of the sample")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (training and sampling)")
    parser.add_argument("--smoke", action="store_true", help="A tiny model for a few seconds, to check the pipeline")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.max_steps <= 0:
        parser.error("--max_steps must be > 0")
    if args.smoke:
        args.max_steps = min(args.max_steps, 20)
        args.max_new_tokens = min(args.max_new_tokens, 10)
    return args


def expected_duration(args: argparse.Namespace) -> str:
    """What the run will take, from the measured default run (printed before it starts)."""
    if args.smoke:
        return "Smoke run: a tiny model for a few seconds"
    if args.minutes is not None:
        return f"Training for {args.minutes:g} min (a time budget: a busier machine makes fewer steps)"
    if args.recipe.resolve() != RECIPE:
        return f"Training {args.max_steps} steps of {args.recipe.name}"
    return (
        f"Training {args.max_steps} steps: expect about {args.max_steps / STEPS_PER_MINUTE:.1f} min of training on 2 "
        "idle CPU cores, plus about 1 min of tokenizing, evaluation and saving (a busy machine takes longer and prints "
        "the same result)"
    )


def ensure_tokenizer() -> None:
    if (TOKENIZER_DIR / "tokenizer.json").is_file():
        return
    print(f"{TOKENIZER_DIR} is missing: training the tokenizer (scripts/train_tokenizer.py)", flush=True)
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "train_tokenizer.py")], check=True, cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ensure_tokenizer()

    recipe = json.loads(args.recipe.read_text())
    values = {
        **DATA,
        "num_train_epochs": 1000,  # max_steps (or the time budget) stops training
        "report_to": "none",
        "use_cpu": not torch.accelerator.is_available(),
        "eval_strategy": "steps",
        "eval_steps": 200,
        "save_strategy": "no",
        "disable_tqdm": False,
        **recipe,
        **(SMOKE if args.smoke else {}),
        "output_dir": str(args.output_dir),
        "seed": args.seed,
    }
    if args.minutes is not None:
        values["max_train_minutes"] = args.minutes
    else:
        values["max_steps"] = args.max_steps
    if args.smoke:
        values["eval_steps"] = 5
    model_args, data_args, run_args, training_args = arguments_from_dict(values)
    print(f"{expected_duration(args)}; recipe {args.recipe.name}, output {args.output_dir}", flush=True)
    results = run_training(model_args, data_args, training_args, run_args, default_tokenizer=TOKENIZER_DIR)

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)
    model = AutoModelForCausalLM.from_pretrained(args.output_dir).eval()
    prompt_ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(args.prompt)["input_ids"]])
    output = model.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=args.temperature,
        top_p=args.top_p,
    )
    sample = args.prompt + tokenizer.decode(output[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    (args.output_dir / "sample.txt").write_text(sample + "\n")

    print()
    print(f"Trained {results['train_steps']} steps ({results['train_tokens']:,} tokens) in "
          f"{results['train_seconds'] / 60:.1f} min; {results['num_parameters'] / 1e6:.2f}M parameters")  # fmt: skip
    print(f"| {'split':<32} | {'token ppl':>9} | {'word ppl':>9} |")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 11}|")
    for split, lines in (("validation", DATA["validation_lines"]), ("test", DATA["test_lines"])):
        if args.smoke:
            lines = SMOKE[f"{split}_lines"]
        print(f"| {split + ' (lines ' + lines + ')':<32} | {results[f'{split}_token_perplexity']:>9.2f} | "
              f"{results[f'{split}_word_perplexity']:>9.2f} |")  # fmt: skip
    print(f"\nSample (temperature {args.temperature}, top_p {args.top_p}):\n{sample}")
    summary = {"arguments": vars(args), "results": results, "sample": sample}
    (args.output_dir / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
