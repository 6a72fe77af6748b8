"""How fast can this core stream a decoding step's weights? The step's three float32 products, cycled, per kernel.

    taskset -c 0 python benchmarks/bench_products.py                       # H=512 L=2 V=8192, batch 1 / 8 / 16

The products of one decoding step of the H=512, L=2, V=8192 model (each LSTM layer's `[W_ih | W_hh]`, 2048 x 1024,
and the output layer, 8192 x 512: 33.6 MB of float32) are run one after the other, as a step runs them, so that the
weights do not stay in the last-level cache between calls, through each kernel this machine has: ATen (`F.linear`,
MKL), numpy (OpenBLAS; `x @ W.T` and `W @ x.T`), onnxruntime (a `Gemm` session, as `kernels_lstmlm` builds it) and
oneDNN (`kernels_lstmlm`'s packed linear). Next to them, in the same run, the pure reads of a 256 MB buffer that
`bench_decode.py`'s floor is made of (`_generate_common.read_bandwidth`: `torch.sum`, numpy `dot` of its two halves,
best of 5): what a product cannot beat. GB/s = weight bytes / time of the three
products (the 25th percentile of `--repeats` runs). One thread.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate_common import read_bandwidth  # noqa: E402


def quartile_time(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 4]


def variants(xs, xn, weights, biases, wn, bn, ort, onednn) -> dict:
    """The three products of one step through each kernel, as functions of no arguments."""

    def triples(*lists):
        return list(zip(*lists, strict=True))

    found = {
        "aten F.linear": lambda: [torch.nn.functional.linear(x, w, b) for x, w, b in triples(xs, weights, biases)],
        "numpy x @ W.T": lambda: [x @ w.T + b for x, w, b in triples(xn, wn, bn)],
        "numpy W @ x.T": lambda: [(w @ x.T).T + b for x, w, b in triples(xn, wn, bn)],
    }
    if ort is not None:
        found["onnxruntime Gemm"] = lambda: [k(x) for k, x in triples(ort, xs)]
    if onednn is not None:
        found["onednn linear"] = lambda: [k(x) for k, x in triples(onednn, xs)]
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from modeling_lstmlm import kernels_lstmlm

    read = read_bandwidth(1, sizes_mib=(256,))["per_size_gbs"][256]  # the floor's own measurement (bench_decode)
    print("pure read of 256 MB: " + ", ".join(f"{kernel} {gbs:.1f} GB/s" for kernel, gbs in read.items()))

    h, v = args.hidden_size, args.vocab_size
    shapes = [(4 * h, 2 * h), (4 * h, 2 * h), (v, h)]
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(*shape, generator=generator) / 30 for shape in shapes]
    biases = [torch.randn(shape[0], generator=generator) for shape in shapes]
    nbytes = sum(w.numel() * 4 for w in weights)
    available = kernels_lstmlm.available_kernels()
    print(f"| batch | kernel | ms for the three products | GB/s |  ({nbytes / 1e6:.1f} MB of weights)")
    print("|---|---|---|---|")
    ort = onednn = None
    if "onnxruntime" in available:
        ort = [kernels_lstmlm._LINEAR_KERNELS["onnxruntime"](w, b) for w, b in zip(weights, biases, strict=True)]
    if "onednn" in available:
        onednn = [kernels_lstmlm._LINEAR_KERNELS["onednn"](w, b) for w, b in zip(weights, biases, strict=True)]
    wn, bn = [w.numpy() for w in weights], [b.numpy() for b in biases]
    for batch in args.batch_sizes:
        xs = [torch.randn(batch, shape[1], generator=generator) for shape in shapes]
        xn = [x.numpy() for x in xs]
        with torch.inference_mode():
            for name, function in variants(xs, xn, weights, biases, wn, bn, ort, onednn).items():
                seconds = quartile_time(function, args.repeats)
                print(f"| {batch} | {name} | {seconds * 1e3:.2f} | {nbytes / seconds / 1e9:.1f} |")
    print(f"\ncpu: {kernels_lstmlm.cpu_description()}, torch {torch.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
