"""Question 3: the LSTM against a GPT-2 of the same size with its KV cache, on long generations.

    python benchmarks/bench_generate_vs_gpt2.py            # small: 256 and 1024 new tokens
    python benchmarks/bench_generate_vs_gpt2.py --full     # the issue's sizes: 1024 and 4096 new tokens

Both models are random, same vocabulary (8192), same parameter count (GPT-2's width and depth are chosen to match
the LSTMLM's count as closely as possible, tied embeddings, `n_positions` = longest length + prompt, so its
position table is counted too), greedy `generate()` with the cache on, batch 1, exactly N new tokens. For each
length both models are timed round-robin in one fresh process (so they share the machine's load); memory is
measured in a fresh process per (model, length). Peak memory is the growth of the process's peak resident
set size during the run, so GPT-2's includes its KV cache (see benchmarks/_generate_common.py).
Goal: the LSTM ahead on tokens/s and on peak memory at each length.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate_common import (  # noqa: E402
    REPO_ROOT,
    add_model_arguments,
    build_lstm,
    count_parameters,
    machine_facts,
    measure_memory,
    measure_times,
    print_facts,
    print_table,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="new-token counts")
    parser.add_argument("--full", action="store_true", help="the issue's sizes: --lengths 1024 4096")
    add_model_arguments(parser)
    parser.add_argument(
        "--gpt2_n_layer", type=int, default=None, help="fix GPT-2's depth (default: the closest parameter count)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed runs of each model per length (round-robin, after one warm-up)"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "runs" / "benchmarks" / "generate_vs_gpt2.json", help="results"
    )
    args = parser.parse_args(argv)
    if args.full:
        args.lengths = [1024, 4096]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    facts = machine_facts(args.threads)
    lstm = {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers}
    n_params = count_parameters(build_lstm({"lstm": lstm}))
    gpt2 = {
        "n_params": n_params,
        "vocab_size": args.vocab_size,
        "n_positions": max(args.lengths) + args.prompt_len,
        "n_layer": args.gpt2_n_layer,
    }
    results = {}
    for n in args.lengths:
        specs = {
            model: dict(
                model=model,
                lstm=lstm,
                gpt2=gpt2,
                method="generate",
                batch=1,
                prompt_len=args.prompt_len,
                new_tokens=n,
            )
            for model in ("lstm", "gpt2")
        }
        timed = measure_times(list(specs.values()), args.threads, args.repeats)
        for model, result in zip(specs, timed, strict=True):
            memory = measure_memory(specs[model], args.threads)
            result["peak_rss_growth_mib"], result["memory_method"] = (
                memory["peak_rss_growth_mib"],
                memory["memory_method"],
            )
            results[(model, n)] = result
            print(
                f"{model} {n} new tokens: {result['seconds_min']:.2f} s, "
                f"peak RSS growth {result['peak_rss_growth_mib']:.2f} MiB",
                file=sys.stderr,
            )

    shape = results[("gpt2", args.lengths[0])]["config"]
    attn = results[("gpt2", args.lengths[0])]["attn_implementation"]
    print(
        f"\nLSTMLM H={args.hidden_size} L={args.num_layers} ({n_params / 1e6:.2f}M parameters) vs GPT2LMHeadModel "
        f"n_embd={shape['n_embd']} n_layer={shape['n_layer']} n_head={shape['n_head']} "
        f"n_positions={gpt2['n_positions']} attn={attn} ({results[('gpt2', args.lengths[0])]['n_params'] / 1e6:.2f}M), "
        f"V={args.vocab_size}, batch 1, prompt {args.prompt_len}, greedy, cache on, "
        f"best of {args.repeats}; memory: {results[('lstm', args.lengths[0])]['memory_method']}\n"
    )
    rows, summary = [], []
    for n in args.lengths:
        lstm_r, gpt2_r = results[("lstm", n)], results[("gpt2", n)]
        speed = {m: n / results[(m, n)]["seconds_min"] for m in ("lstm", "gpt2")}
        memory = {m: results[(m, n)]["peak_rss_growth_mib"] for m in ("lstm", "gpt2")}
        faster = speed["lstm"] / speed["gpt2"]
        rows.append(
            [
                n,
                f"{speed['lstm']:.0f}",
                f"{speed['gpt2']:.0f}",
                f"{faster:.2f}",
                f"{memory['lstm']:.2f}",
                f"{memory['gpt2']:.2f}",
                "yes" if faster > 1 and memory["lstm"] < memory["gpt2"] else "NO",
            ]
        )
        summary.append(
            {
                "new_tokens": n,
                "tokens_per_s": speed,
                "peak_rss_growth_mib": memory,
                "lstm_params": lstm_r["n_params"],
                "gpt2_params": gpt2_r["n_params"],
            }
        )
    print_table(
        [
            "new tokens",
            "LSTM tok/s",
            "GPT-2 tok/s",
            "LSTM / GPT-2 speed",
            "LSTM peak MiB",
            "GPT-2 peak MiB",
            "LSTM ahead on both",
        ],
        rows,
    )
    print()
    print_facts(facts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"args": resolved, "machine": facts, "gpt2": {**gpt2, **shape, "attn": attn}, "results": summary}
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nresults and arguments: {args.output}")


if __name__ == "__main__":
    main()
