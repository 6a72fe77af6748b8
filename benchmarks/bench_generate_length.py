"""Question 2: does a generated token cost the same at any length, in time and in memory?

    python benchmarks/bench_generate_length.py            # small: 64 vs 256 new tokens
    python benchmarks/bench_generate_length.py --full     # the issue's size: 64 vs 1024 new tokens

Greedy `generate()` of the same random LSTMLM (H=512, L=2, V=8192 unless changed), batch 1, exactly N new tokens,
the lengths timed round-robin in one fresh process (so they share the machine's load), memory in a fresh process
per length. Per-token time = wall time / N (the short run carries the
prompt's cost over fewer tokens, which favours the long one slightly; the prompt is 16 tokens). Peak memory is the
growth of the process's peak resident set size during the run (see benchmarks/_generate_common.py).
Goals: per-token time at the long length within 1.2x of the short one; peak memory flat in the length.
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
    measure_memory,
    measure_times,
    print_facts,
    print_table,
)

TIME_GOAL = 1.2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256], help="new-token counts (first: base)")
    parser.add_argument("--full", action="store_true", help="the issue's sizes: --lengths 64 1024")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each length per process (round-robin, after one warm-up)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="fresh timing processes")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "runs" / "benchmarks" / "generate_length.json", help="results"
    )
    args = parser.parse_args(argv)
    if args.full:
        args.lengths = [64, 1024]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    facts = machine_facts(args.threads)
    lstm = {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers}
    specs = [
        dict(
            model="lstm",
            lstm=lstm,
            method="generate",
            batch=args.batch,
            prompt_len=args.prompt_len,
            new_tokens=n,
        )
        for n in args.lengths
    ]
    results = {}
    for _ in range(args.rounds):
        for n, result in zip(args.lengths, measure_times(specs, args.threads, args.repeats), strict=True):
            if n not in results or result["seconds_min"] < results[n]["seconds_min"]:
                results[n] = result
            print(f"{n} new tokens: {result['seconds_min']:.3f} s", file=sys.stderr)
    for n, spec in zip(args.lengths, specs, strict=True):
        memory = measure_memory(spec, args.threads)
        results[n]["peak_rss_growth_mib"], results[n]["memory_method"] = (
            memory["peak_rss_growth_mib"],
            memory["memory_method"],
        )
        print(f"{n} new tokens: peak RSS growth {memory['peak_rss_growth_mib']:.2f} MiB", file=sys.stderr)

    base = args.lengths[0]
    per_token = {n: results[n]["seconds_min"] / n * 1e3 for n in args.lengths}
    print(
        f"\ngenerate() cost per token against length: LSTMLM H={args.hidden_size} L={args.num_layers} "
        f"V={args.vocab_size}, batch {args.batch}, prompt {args.prompt_len}, greedy, "
        f"best of {args.repeats * args.rounds}; memory: {results[base]['memory_method']}\n"
    )
    rows, summary = [], []
    for n in args.lengths:
        ratio = per_token[n] / per_token[base]
        memory = results[n]["peak_rss_growth_mib"]
        rows.append(
            [
                n,
                f"{per_token[n]:.3f}",
                f"{ratio:.2f}",
                "yes" if ratio <= TIME_GOAL else "NO",
                f"{memory:.2f}",
                f"{memory - results[base]['peak_rss_growth_mib']:+.2f}",
            ]
        )
        summary.append({"new_tokens": n, "ms_per_token": per_token[n], "ratio": ratio, "peak_rss_growth_mib": memory})
    print_table(
        [
            "new tokens",
            "ms / token",
            f"vs {base}",
            f"<= {TIME_GOAL}",
            "peak RSS growth MiB",
            f"vs {base} MiB",
        ],
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
