"""How fast is `generate()`'s decoding, against the nn.LSTM step, against the machine's memory-bandwidth floor, in int8,
and on onnxruntime?

    python benchmarks/bench_decode.py                        # CPU: batch 1, 8 and 16, 1 and 2 threads
    python benchmarks/bench_decode.py --device cuda          # a GPU: cuDNN nn.LSTM step vs the direct step, bf16
    python benchmarks/bench_decode.py --smoke                # tiny model, one repeat (checks the script runs)

Greedy decoding of one random LSTMLM (H=512, L=2, V=8192 unless changed), exactly `--new_tokens` new tokens per row
(no eos), measured side by side in one process, variants interleaved, the median of `--repeats` rounds:
  - `nn.LSTM step`: `generate()` with `model.model.direct_decode = False` (each decoding step through `nn.LSTM`);
  - `direct step, ATen kernels`: `generate()` with every layer and the output layer held to ATen's kernels
    (`torch.lstm_cell`, `F.linear`: MKL), as before issue 16;
  - `direct step`: `generate()` as shipped (each layer's step and the output layer run the kernel that
    `kernels_lstmlm` measured fastest on this machine at first use; the choices and the timings behind them are
    printed with the machine facts);
  - `direct int8`: the same after `quantization.quantize_model` (int8 LSTM and output weights);
  - `onnxruntime`: `OnnxLSTMLM.greedy_generate` on the exported prefill/decode-step graphs (CPU only);
  - `onnxruntime int8`: the same on the int8 graphs of `onnx_export.quantize_onnx` (onnxruntime's dynamic quantizer).
Tokens/s counts every row. The floor of a decoding step is the weight bytes it reads (LSTM layers, projection,
output layer, one embedding row per row of the batch) divided by the machine's read bandwidth, measured STREAM-style
in the same run by `_generate_common.read_bandwidth` (pure reads of buffers 2x-8x the last-level cache, the fastest
of `torch.sum` and OpenBLAS `dot`, median over the sizes; before and after each thread count's timings, the higher
figure): no kernel that reads those bytes from memory can beat it, and it does not depend on the kernels under test.
`x floor` = measured ms per step / floor ms. `GB/s` = weight bytes per step / measured ms per step. Batched steps
also do 2 * batch * weights multiply-adds: `x roof` divides by the larger of the read floor and that work at the
peak float32 GFLOP/s of a 1024^3 matrix product measured in the same run (a batch of 16 is compute-bound on a core
without AVX-512). Goals (issue 16): float32 `generate()` within 1.3x of its floor at batch 1 and 2x at batch 8, at
least onnxruntime float32's tokens/s; int8 `generate()` within 1.5x of its floor at batch 1. The variants must
generate the same tokens as `nn.LSTM step` (the int8 ones: not checked).
The int8 ONNX floor counts the decode-step graph's initializers (8-bit weights, float biases and scales, one embedding
row per batch row).
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import statistics  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from _generate_common import cpu_facts, peak_gflops, read_bandwidth  # noqa: E402

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM  # noqa: E402
from modeling_lstmlm.kernels_lstmlm import decode_kernel_choices, set_decode_kernel  # noqa: E402
from modeling_lstmlm.quantization import quantize_model  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INT8_VARIANTS = ("direct int8", "onnxruntime int8")  # other logits by design: their ids are not compared


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="model dtype (cpu: float32, gpu: bfloat16)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 16], help="batch sizes")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch (and onnxruntime) threads (CPU)")
    parser.add_argument("--new_tokens", type=int, default=128, help="new tokens per row")
    parser.add_argument("--prompt_len", type=int, default=8, help="prompt length in tokens")
    parser.add_argument("--hidden_size", type=int, default=512, help="LSTM hidden size")
    parser.add_argument("--num_layers", type=int, default=2, help="LSTM layers")
    parser.add_argument("--vocab_size", type=int, default=8192, help="vocabulary size")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up); median")
    parser.add_argument("--no_int8", action="store_true", help="skip the int8 variants (direct and onnxruntime)")
    parser.add_argument("--no_onnx", action="store_true", help="skip the onnxruntime variants (float and int8)")
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default runs/benchmarks/decode.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, one repeat, few tokens")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.dtype is None:
        args.dtype = "float32" if args.device.type == "cpu" else "bfloat16"
    if args.smoke:
        args.hidden_size, args.vocab_size, args.new_tokens, args.repeats = 32, 256, 8, 1
    if args.output is None:
        args.output = REPO_ROOT / "runs" / "benchmarks" / ("decode_smoke.json" if args.smoke else "decode.json")
    if args.device.type != "cpu":
        args.threads = [torch.get_num_threads()]
    return args


def machine_facts(args) -> dict:
    facts = {
        **cpu_facts(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "device": str(args.device),
        "dtype": args.dtype,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if args.device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(args.device)
    return facts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bandwidth_gbs(device: torch.device, threads: int, smoke: bool = False) -> float:
    """Read bandwidth in GB/s: STREAM-style on the CPU (`_generate_common.read_bandwidth`), a `torch.sum` over 1 GiB
    on a GPU."""
    if device.type == "cpu":
        return read_bandwidth(threads, sizes_mib=(64,) if smoke else None, repeats=2 if smoke else 5)["gbs"]
    buffer = torch.rand(2**28, device=device)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        buffer.sum()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def matmul_weight_numel(model) -> int:
    """Multiply-adds per row of one decoding step: every matrix the step multiplies (LSTM, projection, output)."""
    total = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.dim() == 2 and not name.endswith("embed_tokens.weight"):
            total += tensor.numel()
    if model.config.tie_word_embeddings:
        total += model.model.embed_tokens.weight.numel()
    return total


def weight_bytes_per_step(model, batch: int) -> int:
    """Bytes of weights one decoding step reads: every LSTM/projection/output weight and bias, one embedding row per
    row of the batch (the state is a few KB and left out)."""
    total = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("embed_tokens.weight"):
            total += batch * tensor.shape[1] * tensor.element_size()
        else:
            total += tensor.numel() * tensor.element_size()
    if model.config.tie_word_embeddings:  # the tied output layer reads the whole embedding matrix
        embedding = model.model.embed_tokens.weight
        total += embedding.numel() * embedding.element_size()
    return total


def onnx_weight_bytes_per_step(folder: str, batch: int) -> int:
    """The same count for an exported `decode_step.onnx`: every initializer, except that a table read only by a
    Gather (the embedding) counts one row per row of the batch."""
    import numpy as np
    import onnx

    graph = onnx.load(str(Path(folder) / "decode_step.onnx")).graph
    readers = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, set()).add((node.op_type, position))
    total = 0
    for tensor in graph.initializer:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        size = int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
        if readers.get(tensor.name) == {("Gather", 0)} and len(tensor.dims) == 2:
            size = batch * tensor.dims[1] * itemsize
        total += size
    return total


def generate_overhead_ms(threads: int, new_tokens: int = 64, repeats: int = 5) -> float:
    """Milliseconds per token of `generate()` on a tiny model (H=8, V=32, one layer, batch 1), where the matmuls cost
    next to nothing: the per-token Python of transformers' loop and of the model's forward."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    config = LSTMLMConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, eos_token_id=None)
    tiny = LSTMLMForCausalLM(config).eval()
    prompt = torch.tensor([[5, 6, 7]])
    run = make_generate_run(tiny, True, prompt, new_tokens)
    run()
    seconds = [time_generate(run, torch.device("cpu"), 1)[0] for _ in range(repeats)]
    torch.set_num_threads(previous)
    return statistics.median(seconds) / new_tokens * 1e3


def make_generate_run(model, direct: bool, prompt: torch.Tensor, new_tokens: int, kernel: str = "auto"):
    model.model.direct_decode = direct  # set once: the model is this variant's own
    set_decode_kernel(model, kernel)

    def run():
        return model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None).tolist()

    return run


def make_onnx_run(generator, prompt, new_tokens: int):
    def run():
        return generator.greedy_generate(prompt, max_new_tokens=new_tokens, eos_token_id=None).tolist()

    return run


def time_generate(run, device, repeats: int) -> tuple[float, list]:
    """Best seconds of `run()` over `repeats` timed runs, and the ids of the last run."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        ids = run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, ids


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    facts = machine_facts(args)
    torch.manual_seed(0)
    config = LSTMLMConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, eos_token_id=0
    )
    model = LSTMLMForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # exactly new_tokens per row
    with torch.no_grad():  # the first decoding step picks each module's kernel (kernels_lstmlm): done before timing
        model.generate(torch.tensor([[6, 7]]), max_new_tokens=2, do_sample=False)
    variants = {}  # name -> (model or generator, kind)
    # Each variant has its own copy of the weights: switching one shared model between kernel settings would rebuild
    # the packed copies (and onnxruntime sessions) at the start of every timed run.
    variants["nn.LSTM step"] = (copy.deepcopy(model), "fused")
    variants["direct step, ATen kernels"] = (copy.deepcopy(model), "aten")
    variants["direct step"] = (model, "direct")
    int8 = not args.no_int8 and args.device.type == "cpu" and args.dtype == "float32"
    if int8:
        variants["direct int8"] = (quantize_model(copy.deepcopy(model)), "direct")
    onnx_dir = onnx_int8_dir = None
    if not args.no_onnx and args.device.type == "cpu" and args.dtype == "float32":
        from modeling_lstmlm.onnx_export import export_onnx, quantize_onnx

        onnx_dir = tempfile.TemporaryDirectory()
        export_onnx(model, onnx_dir.name)
        if int8:
            onnx_int8_dir = tempfile.TemporaryDirectory()
            quantize_onnx(onnx_dir.name, onnx_int8_dir.name)
    for name, (variant_model, _) in variants.items():
        variant_model.to(device=args.device, dtype=None if name in INT8_VARIANTS else dtype)

    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        ort = ort_int8 = None
        if onnx_dir is not None:
            from modeling_lstmlm.onnx_export import OnnxLSTMLM

            ort = OnnxLSTMLM(onnx_dir.name, num_threads=threads)
        if onnx_int8_dir is not None:
            ort_int8 = OnnxLSTMLM(onnx_int8_dir.name, num_threads=threads)
        bandwidth = bandwidth_gbs(args.device, threads, args.smoke)
        facts[f"generate() per-token overhead, {threads} thread(s), ms"] = round(generate_overhead_ms(threads), 3)
        gflops = peak_gflops(threads) if args.device.type == "cpu" else None
        for batch in args.batch_sizes:
            seed = torch.Generator().manual_seed(0)
            prompt = torch.randint(6, args.vocab_size, (batch, args.prompt_len), generator=seed).to(args.device)
            runs = {
                name: (
                    make_generate_run(
                        variant_model, kind != "fused", prompt, args.new_tokens, "aten" if kind == "aten" else "auto"
                    ),
                    variant_model,
                )
                for name, (variant_model, kind) in variants.items()
            }
            if ort is not None:
                runs["onnxruntime"] = (make_onnx_run(ort, prompt.cpu().numpy(), args.new_tokens), model)
            if ort_int8 is not None:
                runs["onnxruntime int8"] = (make_onnx_run(ort_int8, prompt.cpu().numpy(), args.new_tokens), None)
            times = {name: [] for name in runs}
            ids = {}
            for name, (run, _) in runs.items():  # warm-up
                ids[name] = run()
            for _ in range(args.repeats):  # interleaved: each round measures every variant once
                for name, (run, _) in runs.items():
                    seconds, ids[name] = time_generate(run, args.device, 1)
                    times[name].append(seconds)
            bandwidth = max(bandwidth, bandwidth_gbs(args.device, threads, args.smoke))  # and after the timings
            for name, (_, variant_model) in runs.items():
                median = statistics.median(times[name])
                step_ms = median / args.new_tokens * 1e3
                if variant_model is None:  # the int8 ONNX graphs: count their own initializers
                    floor_bytes = onnx_weight_bytes_per_step(onnx_int8_dir.name, batch)
                else:
                    floor_bytes = weight_bytes_per_step(variant_model, batch)
                floor_ms = floor_bytes / (bandwidth * 1e9) * 1e3
                flop_ms = None
                if gflops is not None:
                    flop_ms = 2 * batch * matmul_weight_numel(model) / (gflops * 1e9) * 1e3
                roof_ms = max(floor_ms, flop_ms or 0.0)
                results.append(
                    {
                        "threads": threads,
                        "batch": batch,
                        "variant": name,
                        "tokens_per_s": batch * args.new_tokens / median,
                        "tokens_per_s_best": batch * args.new_tokens / min(times[name]),
                        "ms_per_step": step_ms,
                        "ms_per_step_runs": [t / args.new_tokens * 1e3 for t in times[name]],
                        "weight_mb_per_step": floor_bytes / 1e6,
                        "weight_gbs": floor_bytes / step_ms / 1e6,
                        "read_bandwidth_gbs": bandwidth,
                        "peak_gflops": gflops,
                        "floor_ms_per_step": floor_ms,
                        "x_floor": step_ms / floor_ms,
                        "x_roof": step_ms / roof_ms,
                        "same_ids_as_nn_lstm": ids[name] == ids["nn.LSTM step"] if name not in INT8_VARIANTS else None,
                    }
                )
    for module_name, (kernel, reason) in decode_kernel_choices(model).items():  # what `generate()` runs here
        facts[f"decode kernel of {module_name}"] = f"{kernel} ({reason})"
    for folder in (onnx_dir, onnx_int8_dir):
        if folder is not None:
            folder.cleanup()
    report(results, facts, args)
    return {"facts": facts, "results": results}


def report(results: list[dict], facts: dict, args) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
    print(
        f"model: H={args.hidden_size} L={args.num_layers} V={args.vocab_size}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, median of {args.repeats} interleaved rounds"
    )
    for threads in dict.fromkeys(r["threads"] for r in results):
        row = next(r for r in results if r["threads"] == threads)
        peak = f", peak {row['peak_gflops']:.0f} GFLOP/s" if row["peak_gflops"] else ""
        print(f"{threads} thread(s): read bandwidth {row['read_bandwidth_gbs']:.1f} GB/s{peak}")
    headers = ["threads", "batch", "variant", "tokens/s", "ms/step", "vs nn.LSTM", "weights MB", "GB/s", "floor ms"]
    headers += ["x floor", "x roof", "same ids"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in results:
        base = next(
            r
            for r in results
            if (r["threads"], r["batch"], r["variant"]) == (row["threads"], row["batch"], "nn.LSTM step")
        )
        same = {True: "yes", False: "NO", None: "-"}[row["same_ids_as_nn_lstm"]]
        cells = [
            row["threads"],
            row["batch"],
            row["variant"],
            f"{row['tokens_per_s']:.0f}",
            f"{row['ms_per_step']:.2f}",
            f"{row['tokens_per_s'] / base['tokens_per_s']:.2f}x",
            f"{row['weight_mb_per_step']:.1f}",
            f"{row['weight_gbs']:.1f}",
            f"{row['floor_ms_per_step']:.2f}",
            f"{row['x_floor']:.2f}",
            f"{row['x_roof']:.2f}",
            same,
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in vars(args).items()}
    args.output.write_text(json.dumps({"facts": facts, "args": resolved, "results": results}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
