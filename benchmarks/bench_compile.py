"""Does `torch.compile` of the model's forward speed up the decoding step, and does the step compile whole?

    python benchmarks/bench_compile.py                 # H=512, L=2, V=8192, batch 1 and 8, 128 steps, 1 thread

The same random LSTMLM decodes greedily one token at a time (`model(token, cache=..., use_cache=True,
logits_to_keep=1)`, the call `generate()` makes) with the eager forward and with `torch.compile(model.forward)`
(default mode; compiled once, warmed up, not timed), timed round-robin in one process so both share the machine's load;
the best of `--repeats` runs is kept. `torch._dynamo.explain` reports the graphs and graph breaks of one step. Both
must produce the same tokens. The faster one is the library's default (eager unless this table says otherwise).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _generate_common import REPO_ROOT, machine_facts, print_facts, print_table  # noqa: E402

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    parser.add_argument("--steps", type=int, default=128, help="decoding steps per timed run")
    parser.add_argument("--hidden_size", type=int, default=512, help="LSTM hidden size")
    parser.add_argument("--num_layers", type=int, default=2, help="LSTM layers")
    parser.add_argument("--vocab_size", type=int, default=8192, help="vocabulary size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant (round-robin)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and few steps (checks the script runs)")
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "runs" / "benchmarks" / "compile.json", help="results (JSON)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden_size, args.vocab_size, args.steps, args.repeats, args.batch_sizes = 16, 64, 8, 1, [2]
    return args


@torch.no_grad()
def decode(forward, model, prompt: torch.Tensor, steps: int) -> tuple[float, list]:
    """Seconds for `steps` greedy one-token steps after the prompt, and the tokens."""
    out = model(prompt, use_cache=True, logits_to_keep=1)
    cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = []
    start = time.perf_counter()
    for _ in range(steps):
        logits = forward(token, cache=cache, use_cache=True, logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    seconds = time.perf_counter() - start
    return seconds, torch.cat(tokens, 1).tolist()


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LSTMLMConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, eos_token_id=None
    )
    model = LSTMLMForCausalLM(config).eval()
    compiled = torch.compile(model.forward)
    rows, results = [], []
    for batch in args.batch_sizes:
        prompt = torch.randint(2, args.vocab_size, (batch, 8), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            cache = model(prompt, use_cache=True).cache
            explain = torch._dynamo.explain(model.forward)(prompt[:, :1], cache=cache, use_cache=True, logits_to_keep=1)
        variants = {"eager": model.forward, "torch.compile": compiled}
        for forward in variants.values():
            decode(forward, model, prompt, 4)  # compile and warm up
        best = {name: float("inf") for name in variants}
        tokens = {}
        for _ in range(args.repeats):
            for name, forward in variants.items():
                seconds, tokens[name] = decode(forward, model, prompt, args.steps)
                best[name] = min(best[name], seconds)
        ms = {name: best[name] / args.steps * 1e3 for name in variants}
        ratio = ms["eager"] / ms["torch.compile"]
        same = tokens["eager"] == tokens["torch.compile"]
        rows.append(
            [
                batch,
                f"{ms['eager']:.3f}",
                f"{ms['torch.compile']:.3f}",
                f"{ratio:.2f}",
                explain.graph_count,
                explain.graph_break_count,
                "yes" if same else "NO",
            ]
        )
        results.append(
            {
                "batch": batch,
                "ms_per_step": ms,
                "compiled_speedup": ratio,
                "graphs": explain.graph_count,
                "graph_breaks": explain.graph_break_count,
                "same_tokens": same,
            }
        )
    print(
        f"\nDecoding step, eager vs torch.compile(model.forward): LSTMLM H={args.hidden_size} L={args.num_layers} "
        f"V={args.vocab_size}, {args.steps} steps, best of {args.repeats}, {args.threads} thread(s)\n"
    )
    headers = ["batch", "eager ms/step", "compiled ms/step", "compiled speed-up", "graphs", "graph breaks", "same ids"]
    print_table(headers, rows)
    print()
    print_facts(machine_facts(args.threads))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.output.write_text(json.dumps({"args": resolved, "results": results}, indent=2) + "\n")
    print(f"\nresults and arguments: {args.output}")


if __name__ == "__main__":
    main()
