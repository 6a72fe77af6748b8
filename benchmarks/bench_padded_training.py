"""Training on padded batches: a right-padded batch (the fused LSTM kernel on the whole rectangle, what the model
runs when no state is returned) against the same rows left-padded (packed sequences, the path any padding took
before), side by side in one process.

    taskset -c 0 python benchmarks/bench_padded_training.py              # H=512, E=256, V=8192, batch 32, 16-48 tokens
    python benchmarks/bench_padded_training.py --steps 3 --repeats 1     # a quick look

Both sides run forward, backward and an AdamW step of `LSTMLMForCausalLM` in training mode on the same rows (the
shapes of the translation benchmark's LSTM), with the loss on the same tokens; they are timed in turn, `--repeats`
times (A B A B ...), and the table reports the median seconds per step and the ratio packed / right-padded. The
two sides' losses before training (eval mode) are printed too: equal within float32 tolerance, as padding never
touches a real token.
"""

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from _generate_common import cpu_name  # noqa: E402

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--embedding_size", type=int, default=256)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--min_length", type=int, default=16, help="Shortest row (tokens)")
    p.add_argument("--max_length", type=int, default=48, help="Longest row (tokens): the padded width")
    p.add_argument("--steps", type=int, default=10, help="Timed steps per measurement (after one untimed step)")
    p.add_argument("--repeats", type=int, default=3, help="Measurements per side, interleaved")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.min_length <= args.max_length:
        p.error("--min_length must be in [1, --max_length]")
    return args


def padded_batch(rows: list[list[int]], width: int, side: str, pad_id: int) -> dict:
    """`input_ids`, `attention_mask` and `labels` (-100 on padding and on each row's first token, which left
    padding would otherwise score from a pad) with the rows padded on `side`."""
    ids, mask, labels = [], [], []
    for row in rows:
        pad = width - len(row)
        real = [1] * len(row)
        row_labels = [-100, *row[1:]]
        if side == "right":
            ids.append(row + [pad_id] * pad), mask.append(real + [0] * pad), labels.append(row_labels + [-100] * pad)
        else:
            ids.append([pad_id] * pad + row), mask.append([0] * pad + real), labels.append([-100] * pad + row_labels)
    return {k: torch.tensor(v) for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = LSTMLMConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        embedding_size=args.embedding_size,
        num_hidden_layers=args.num_layers,
        pad_token_id=1,
    )
    generator = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_length, args.max_length + 1, (args.batch_size,), generator=generator).tolist()
    lengths[0] = args.max_length
    rows = [torch.randint(2, args.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    batches = {side: padded_batch(rows, args.max_length, side, 1) for side in ("right", "left")}

    models, optimizers = {}, {}
    for side in batches:
        torch.manual_seed(args.seed)
        models[side] = LSTMLMForCausalLM(config).train()
        optimizers[side] = torch.optim.AdamW(models[side].parameters(), lr=1e-4)

    def step(side):
        loss = models[side](**batches[side]).loss
        loss.backward()
        optimizers[side].step()
        optimizers[side].zero_grad()
        return loss.item()

    with torch.no_grad():  # the same weights on both sides; eval mode: no dropout, no state returned
        first_loss = {side: models[side].eval()(**batches[side], use_cache=False).loss.item() for side in batches}
    for side in batches:
        models[side].train()
        step(side)  # untimed
    times = {side: [] for side in batches}
    for _ in range(args.repeats):
        for side in batches:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(side)
            times[side].append((time.perf_counter() - start) / args.steps)

    tokens = sum(lengths)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {args.threads} thread(s)")
    print(
        f"H={args.hidden_size} E={args.embedding_size} L={args.num_layers} V={args.vocab_size}, batch "
        f"{args.batch_size} rows of {args.min_length}-{args.max_length} tokens ({tokens} real of "
        f"{args.batch_size * args.max_length}), {args.steps} steps x {args.repeats} repeats, median"
    )
    right, left = first_loss["right"], first_loss["left"]
    print(f"loss before training (eval mode): right-padded {right:.6f}, left-padded {left:.6f}")
    median = {side: statistics.median(t) for side, t in times.items()}
    print("| padding | path | s/step | real tokens/s |")
    print("|---|---|---|---|")
    for side, path in (("right", "fused kernel, no packing"), ("left", "packed sequences")):
        print(f"| {side} | {path} | {median[side]:.3f} | {tokens / median[side]:,.0f} |")
    print(f"packed / right-padded time: {median['left'] / median['right']:.2f}x")


if __name__ == "__main__":
    main()
