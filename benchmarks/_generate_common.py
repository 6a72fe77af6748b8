"""Shared pieces of the generation benchmarks: models, decode loops, measurements in fresh processes, tables.

Times: one fresh process (`python benchmarks/_generate_common.py '<json request>'`) builds every configuration being
compared, warms each up, then times them round-robin, so that they share whatever load the machine has; the best
of the runs is reported. Memory: one fresh process per configuration and a single run, so that its peak is its
own: the peak resident set size (Linux `VmHWM`, reset through `/proc/self/clear_refs` right before the run) minus
the resident set size just before it. That is the memory the operating system had to hand the process for the
generation itself (state or KV cache, logits, activations, allocator slack), torch allocations included. Where
`clear_refs` cannot be written, a thread samples the resident set size every millisecond instead (the tables say
which).
"""

import contextlib
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

# The realistic size named in the issue: H=512, L=2, V=8192 (the bundled tokenizer).
DEFAULT_LSTM = {"vocab_size": 8192, "hidden_size": 512, "num_hidden_layers": 2}


def add_model_arguments(parser) -> None:
    """The options every generation benchmark takes for its prompt and its LSTM's shape."""
    parser.add_argument("--prompt_len", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--hidden_size", type=int, default=DEFAULT_LSTM["hidden_size"], help="LSTM hidden size")
    parser.add_argument("--num_layers", type=int, default=DEFAULT_LSTM["num_hidden_layers"], help="LSTM layers")
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_LSTM["vocab_size"], help="vocabulary size")


# ---------------------------------------------------------------- machine facts and tables


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows, else "unknown"."""
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_facts() -> dict:
    """What decides the speed of a CPU kernel: vendor, model, the vector ISA flags that matter, the last-level cache,
    and the BLAS / oneDNN builds that torch and numpy carry (from `torch.__config__.show()` and numpy's config)."""
    facts = {"cpu": cpu_name(), "vendor": "unknown", "isa": "unknown", "last-level cache": "unknown"}
    try:
        info = Path("/proc/cpuinfo").read_text()
        vendor = re.search(r"vendor_id\s*:\s*(.+)", info)
        flags = re.search(r"flags\s*:\s*(.+)", info)
        facts["vendor"] = vendor.group(1).strip() if vendor else "unknown"
        if flags:
            present = set(flags.group(1).split())
            facts["isa"] = " ".join(f for f in _ISA_FLAGS if f in present) or "none of " + ", ".join(_ISA_FLAGS)
    except OSError:
        pass
    facts["last-level cache"] = f"{_llc_bytes() / 2**20:g} MiB"
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.-]+)", config)
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    capability = re.search(r"CPU capability usage: (\w+)", config)
    facts["torch BLAS"] = (blas.group(1) if blas else "unknown") + (f" {mkl.group(1)}" if mkl else "")
    facts["torch oneDNN"] = onednn.group(1) if onednn else "none"
    facts["torch CPU capability"] = capability.group(1) if capability else "unknown"
    try:
        import numpy

        blas_info = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        facts["numpy BLAS"] = f"{blas_info.get('name')} {blas_info.get('version')}"
    except Exception:  # noqa: BLE001 - an older numpy without dict config: leave it out
        pass
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        facts["onnxruntime"] = "not installed"
    return facts


def _llc_bytes() -> int:
    for index in (3, 2):
        size = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        if size.exists():
            text = size.read_text().strip().upper()
            scale = {"K": 2**10, "M": 2**20}.get(text[-1], 1)
            return int(text.rstrip("KM")) * scale
    return 32 * 2**20


def read_bandwidth(threads: int, sizes_mib: tuple[int, ...] | None = None, repeats: int = 5) -> dict:
    """STREAM-style pure read bandwidth of main memory, in GB/s (1e9 bytes per second).

    For each buffer size (default: 2x, 4x and 8x the last-level cache, at least 64 MiB, so nothing is served from
    cache) and each read kernel (`torch.sum`; numpy/OpenBLAS `dot` of the buffer's two halves when threadpoolctl can
    hold it to `threads`), the best of `repeats` passes; per size the fastest kernel; the figure is the median over the
    sizes. A floor computed from it (bytes / bandwidth) is what any kernel that must read those bytes from memory
    cannot beat; it does not depend on the kernels under test.
    """
    import numpy as np

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if sizes_mib is None:
        base = max(64, 2 * _llc_bytes() // 2**20)
        sizes_mib = (base, 2 * base, 4 * base)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    per_size = {}
    try:
        for mib in sizes_mib:
            buffer = torch.rand(mib * 2**20 // 4)  # float32
            half = buffer.numel() // 2
            array = buffer.numpy()
            kernels = {"torch.sum": buffer.sum}
            if threadpool_limits is not None:
                first, second = array[:half], array[half : 2 * half]
                kernels["numpy dot"] = lambda first=first, second=second: np.dot(first, second)
            rates = {}
            for name, kernel in kernels.items():
                limiter = threadpool_limits(threads) if threadpool_limits is not None else contextlib.nullcontext()
                with limiter:
                    kernel()
                    best = float("inf")
                    for _ in range(repeats):
                        start = time.perf_counter()
                        kernel()
                        best = min(best, time.perf_counter() - start)
                rates[name] = buffer.numel() * 4 / best / 1e9
            per_size[mib] = rates
    finally:
        torch.set_num_threads(previous)
    best_per_size = [max(rates.values()) for rates in per_size.values()]
    return {"gbs": statistics.median(best_per_size), "per_size_gbs": per_size}


def peak_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Float32 multiply-add throughput of a large square matrix product (the best of torch's and numpy's BLAS), in
    GFLOP/s: the compute roof that batched decoding steps (8, 16 rows) approach."""
    import numpy as np

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a = torch.rand(n, n)
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(threads)
        products = {"torch.mm": lambda: a @ a, "numpy": lambda: np.matmul(a.numpy(), a.numpy())}
    except ImportError:
        limiter = contextlib.nullcontext()
        products = {"torch.mm": lambda: a @ a}
    best = float("inf")
    try:
        with limiter:
            for product in products.values():
                product()
                for _ in range(repeats):
                    start = time.perf_counter()
                    product()
                    best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / best / 1e9


def machine_facts(threads: int) -> dict:
    import transformers

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu_name(),
        "logical cores": os.cpu_count(),
        "torch threads per run": threads,
        "load average (1 min) at start": round(load, 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def print_facts(facts: dict) -> None:
    print("machine:")
    for key, value in facts.items():
        print(f"  {key}: {value}")


def print_table(headers: list[str], rows: list[list]) -> None:
    """A GitHub-markdown table, so it can be pasted into the README as printed."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _run_worker(request: dict) -> list[dict]:
    threads = str(request["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(request)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {request} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- models


def build_lstm(spec: dict):
    from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

    torch.manual_seed(spec.get("seed", 0))
    config = LSTMLMConfig(**spec.get("lstm", DEFAULT_LSTM), eos_token_id=None)  # no early stop: exactly N tokens
    return LSTMLMForCausalLM(config).eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def gpt2_config_matching(n_params: int, vocab_size: int, n_positions: int, n_layer: int | None = None, head_dim=64):
    """The GPT-2 (tied embeddings) whose parameter count is closest to `n_params`, with that vocabulary (and that
    depth when `n_layer` is given)."""
    from transformers import GPT2Config

    def gpt2_params(d: int, layers: int) -> int:
        # wte + wpe + per layer (2 LayerNorms, c_attn, c_proj, c_fc, mlp c_proj) + final LayerNorm
        return vocab_size * d + n_positions * d + layers * (12 * d * d + 13 * d) + 2 * d

    best = min(
        (
            (d, layers)
            for d in range(head_dim, 2048 + 1, head_dim)
            for layers in ([n_layer] if n_layer else range(1, 25))
        ),
        key=lambda dl: (abs(gpt2_params(*dl) - n_params), -dl[1]),
    )
    d, layers = best
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=d,
        n_layer=layers,
        n_head=d // head_dim,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def build_gpt2(spec: dict):
    from transformers import GPT2LMHeadModel

    g = spec["gpt2"]
    config = gpt2_config_matching(g["n_params"], g["vocab_size"], g["n_positions"], g.get("n_layer"))
    torch.manual_seed(spec.get("seed", 0))
    return GPT2LMHeadModel(config).eval()


# ---------------------------------------------------------------- decode loops written by hand over the same weights


def _nn_lstms(model) -> list[torch.nn.LSTM]:
    """One `nn.LSTM` per layer of `model`, holding the same weights (the layers' parameters are nn.LSTM's)."""
    lstms = []
    for layer in model.model.layers:
        lstm = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True)
        lstm.load_state_dict(layer.state_dict())
        lstms.append(lstm.to(layer.weight_ih_l0.device, layer.weight_ih_l0.dtype).eval())
    return lstms


@torch.inference_mode()
def loop_nn_lstm(model, input_ids: torch.LongTensor, new_tokens: int) -> torch.LongTensor:
    """The loop a PyTorch user writes: `nn.LSTM` layers on the model's weights called one token at a time, greedy."""
    backbone, head = model.model, model.lm_head
    lstms = _nn_lstms(model)
    x = backbone.embed_tokens(input_ids)  # (batch, prompt, embedding)
    states = []
    for lstm in lstms:
        x, state = lstm(x)
        states.append(state)
    top = backbone.proj(x[:, -1]) if backbone.proj is not None else x[:, -1]
    token = head(top).argmax(-1)  # (batch,)
    out = input_ids.new_empty(input_ids.shape[0], new_tokens)
    for step in range(new_tokens):
        out[:, step] = token
        if step == new_tokens - 1:
            break
        x = backbone.embed_tokens(token)[:, None]  # (batch, 1, embedding)
        for i, lstm in enumerate(lstms):
            x, states[i] = lstm(x, states[i])
        top = backbone.proj(x[:, 0]) if backbone.proj is not None else x[:, 0]
        token = head(top).argmax(-1)
    return torch.cat([input_ids, out], dim=1)


@torch.inference_mode()
def loop_lstm_cell(model, input_ids: torch.LongTensor, new_tokens: int) -> torch.LongTensor:
    """The fastest loop we know how to write by hand: the prompt through the fused layers, then `torch.lstm_cell`
    (the `nn.LSTMCell` kernel) on the same weights for each token, greedy."""
    backbone, head = model.model, model.lm_head
    x = backbone.embed_tokens(input_ids)
    states, weights = [], []
    for layer in backbone.layers:
        x, (h, c) = layer(x)  # (batch, prompt, hidden), (batch, hidden) x 2
        states.append((h, c))
        weights.append((layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0))
    top = backbone.proj(x[:, -1]) if backbone.proj is not None else x[:, -1]
    token = head(top).argmax(-1)
    out = input_ids.new_empty(input_ids.shape[0], new_tokens)
    for step in range(new_tokens):
        out[:, step] = token
        if step == new_tokens - 1:
            break
        x = backbone.embed_tokens(token)  # (batch, embedding)
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            states[i] = torch.lstm_cell(x, states[i], w_ih, w_hh, b_ih, b_hh)
            x = states[i][0]
        top = backbone.proj(x) if backbone.proj is not None else x
        token = head(top).argmax(-1)
    return torch.cat([input_ids, out], dim=1)


@torch.inference_mode()
def loop_modules(model, input_ids: torch.LongTensor, new_tokens: int) -> torch.LongTensor:
    """A hand loop over the model's own modules (embedding, each `LSTMLMLayer` with its state, projection, output
    layer), so the same decoding kernels as `generate()` run: what is left between the two is `generate()`'s own
    per-token work (its loop, the forward's bookkeeping, the cache object)."""
    backbone, head = model.model, model.lm_head
    x = backbone.embed_tokens(input_ids)
    states = []
    for layer in backbone.layers:
        x, state = layer(x)
        states.append(state)
    top = backbone.proj(x[:, -1:]) if backbone.proj is not None else x[:, -1:]
    token = head(top)[:, 0].argmax(-1)
    out = input_ids.new_empty(input_ids.shape[0], new_tokens)
    for step in range(new_tokens):
        out[:, step] = token
        if step == new_tokens - 1:
            break
        x = backbone.embed_tokens(token[:, None])  # (batch, 1, embedding)
        for i, layer in enumerate(backbone.layers):
            x, states[i] = layer(x, states[i])
        top = backbone.proj(x) if backbone.proj is not None else x
        token = head(top)[:, 0].argmax(-1)
    return torch.cat([input_ids, out], dim=1)


def run_generate(model, input_ids: torch.LongTensor, new_tokens: int) -> torch.LongTensor:
    return model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
    )


def run_generate_unforced(model, input_ids: torch.LongTensor, new_tokens: int) -> torch.LongTensor:
    """`generate()` as a user calls it (eos checked at every step), without `min_new_tokens`: what the hand loops
    compute (they neither stop at nor mask eos). The caller checks that no row stopped early (the output's shape)."""
    return model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens, do_sample=False, use_cache=True
    )


METHODS = {
    "generate": run_generate,
    "generate_unforced": run_generate_unforced,
    "loop_nn_lstm": loop_nn_lstm,
    "loop_lstm_cell": loop_lstm_cell,
    "loop_modules": loop_modules,
}


# ---------------------------------------------------------------- one measurement (in its own process)


def _rss_kb() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _hwm_kb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class PeakRSS:
    """Peak resident set size growth over a block, in MiB."""

    def __enter__(self):
        self.method = "VmHWM after clear_refs"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "psutil sampling at 1 ms"
        self.before_kb = _rss_kb() if self.method.startswith("VmHWM") else None
        if self.before_kb is None:
            import psutil

            process = psutil.Process()
            self.before_kb = process.memory_info().rss // 1024
            self._peak_kb, self._stop = self.before_kb, threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak_kb = max(self._peak_kb, process.memory_info().rss // 1024)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.method.startswith("VmHWM"):
            peak = _hwm_kb()
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak_kb
        self.growth_mib = (peak - self.before_kb) / 1024


def _prepare(spec: dict):
    model = build_gpt2(spec) if spec["model"] == "gpt2" else build_lstm(spec)
    generator = torch.Generator().manual_seed(spec.get("seed", 0))
    input_ids = torch.randint(2, model.config.vocab_size, (spec["batch"], spec["prompt_len"]), generator=generator)
    method = METHODS[spec["method"]]
    with torch.inference_mode():
        method(model, input_ids, min(spec["new_tokens"], 8))  # warm-up: first-call allocations, lazy initialisation
    return model, method, input_ids


def worker(request: dict) -> list[dict]:
    """Times the jobs of `request` round-robin (`repeats` rounds), so that they share the machine's load; with
    `memory`, the single job's first run is measured for peak memory instead, and timed once."""
    torch.set_num_threads(request["threads"])
    specs = request["jobs"]
    if request.get("memory") and len(specs) != 1:
        raise ValueError("a memory measurement takes exactly one job (a fresh process each)")
    prepared = [_prepare(spec) for spec in specs]
    times = [[] for _ in specs]
    outputs = [None] * len(specs)
    memory = PeakRSS() if request.get("memory") else None
    for _ in range(1 if memory is not None else request.get("repeats", 3)):
        for i, ((model, method, input_ids), spec) in enumerate(zip(prepared, specs, strict=True)):
            with memory if memory is not None else contextlib.nullcontext(), torch.inference_mode():
                start = time.perf_counter()
                outputs[i] = method(model, input_ids, spec["new_tokens"])
                times[i].append(time.perf_counter() - start)
    results = []
    for (model, _, _), spec, seconds, out in zip(prepared, specs, times, outputs, strict=True):
        if out.shape != (spec["batch"], spec["prompt_len"] + spec["new_tokens"]):
            raise RuntimeError(f"{spec['method']} returned shape {tuple(out.shape)}")
        results.append(
            {
                "seconds_min": min(seconds),
                "seconds_median": statistics.median(seconds),
                "peak_rss_growth_mib": memory.growth_mib if memory is not None else None,
                "memory_method": memory.method if memory is not None else None,
                "n_params": count_parameters(model),
                "tokens": out[:, spec["prompt_len"] :].tolist(),
                "config": {k: v for k, v in model.config.to_dict().items() if k in ("n_embd", "n_layer", "n_head")},
                "attn_implementation": getattr(model.config, "_attn_implementation", None),
            }
        )
    return results


def measure_times(specs: list[dict], threads: int, repeats: int) -> list[dict]:
    """One fresh process that times `specs` round-robin, `repeats` runs each after a warm-up."""
    return _run_worker({"jobs": specs, "threads": threads, "repeats": repeats})


def measure_memory(spec: dict, threads: int) -> dict:
    """One fresh process, one run of `spec`: its peak resident-set growth (and that run's time)."""
    return _run_worker({"jobs": [spec], "threads": threads, "memory": True})[0]


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
