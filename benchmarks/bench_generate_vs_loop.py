"""Question 1: how close is `generate()` to a hand-written PyTorch decode loop over the same weights?

    python benchmarks/bench_generate_vs_loop.py            # small: 64 new tokens, batch 1 and 8
    python benchmarks/bench_generate_vs_loop.py --full     # the issue's size: 256 new tokens

Greedy decoding of the same random LSTMLM (H=512, L=2, V=8192 unless changed), same prompt, exactly N new tokens
(no eos), by three methods, timed round-robin in one fresh process (so they share the machine's load):
  - `generate`: `model.generate(..., max_new_tokens=N, do_sample=False)` with the (h, c) state as its cache, as a user
    calls it: eos is checked at every step (the run fails if a row stops early). No `min_new_tokens`: it adds two
    logits processors (an eos mask over the vocabulary, and a signature inspection per processor per step, 0.13 ms a
    token on a tiny model), work that none of the loops does;
  - `nn.LSTM loop`: the model's `nn.LSTM` layers called once per token (the loop a PyTorch user writes);
  - `lstm_cell loop`: the prompt through the fused layers, then `torch.lstm_cell` per token (ATen's kernel; the
    output layer is the model's own module);
  - `model-modules loop`: the model's own modules called by hand (embedding, each `LSTMLMLayer` with its state,
    output layer), so the same per-machine decoding kernels run as in `generate` (`kernels_lstmlm`): the gap to it is
    `generate`'s own per-token work.
Tokens/s counts every row of the batch; the best of `--repeats` runs in each of `--rounds` processes is kept.
Goal (issue 11): `generate` at least 0.85x the fastest hand loop. All must produce the same tokens (checked).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate_common import (  # noqa: E402
    REPO_ROOT,
    add_model_arguments,
    machine_facts,
    measure_times,
    print_facts,
    print_table,
)

METHODS = {
    "generate_unforced": "generate",
    "loop_nn_lstm": "nn.LSTM loop",
    "loop_lstm_cell": "lstm_cell loop",
    "loop_modules": "model-modules loop",
}
LOOPS = [m for m in METHODS if m != "generate_unforced"]
GOAL = 0.85


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    parser.add_argument("--new_tokens", type=int, default=64, help="new tokens per row (the issue: 256)")
    parser.add_argument("--full", action="store_true", help="the issue's size: --new_tokens 256")
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each method per process (round-robin, after one warm-up)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="fresh measuring processes per batch size")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "runs" / "benchmarks" / "generate_vs_loop.json", help="results"
    )
    args = parser.parse_args(argv)
    if args.full:
        args.new_tokens = 256
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    facts = machine_facts(args.threads)
    lstm = {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers}
    results = {}
    for batch in args.batch_sizes:
        specs = [
            dict(
                model="lstm",
                lstm=lstm,
                method=method,
                batch=batch,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
            )
            for method in METHODS
        ]
        for _ in range(args.rounds):
            for method, result in zip(METHODS, measure_times(specs, args.threads, args.repeats), strict=True):
                best = results.get((batch, method))
                if best is None or result["seconds_min"] < best["seconds_min"]:
                    results[(batch, method)] = result
                print(f"batch {batch} {METHODS[method]}: {result['seconds_min']:.3f} s", file=sys.stderr)

    n_params = results[(args.batch_sizes[0], "generate_unforced")]["n_params"]
    print(
        f"\ngenerate() vs hand-written decode loops: LSTMLM H={args.hidden_size} L={args.num_layers} "
        f"V={args.vocab_size} ({n_params / 1e6:.2f}M parameters), prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy; tokens/s over all rows, best of {args.repeats * args.rounds}\n"
    )
    rows, summary = [], []
    for batch in args.batch_sizes:
        speed = {m: batch * args.new_tokens / results[(batch, m)]["seconds_min"] for m in METHODS}
        best_loop = max(speed[m] for m in LOOPS)
        same = all(results[(batch, m)]["tokens"] == results[(batch, "generate_unforced")]["tokens"] for m in METHODS)
        ratio = speed["generate_unforced"] / best_loop
        rows.append(
            [batch]
            + [f"{speed[m]:.0f}" for m in METHODS]
            + [f"{ratio:.2f}", "yes" if ratio >= GOAL else "NO", "yes" if same else "NO"]
        )
        summary.append({"batch": batch, "tokens_per_s": speed, "ratio_to_best_loop": ratio, "same_tokens": same})
    print_table(
        ["batch"] + [f"{name} tok/s" for name in METHODS.values()] + ["generate / best loop", f">= {GOAL}", "same ids"],
        rows,
    )
    print()
    print_facts(facts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.output.write_text(json.dumps({"args": resolved, "machine": facts, "results": summary}, indent=2) + "\n")
    print(f"\nresults and arguments: {args.output}")


if __name__ == "__main__":
    main()
