"""Faster CPU kernels for the one-token decoding step of an LSTM layer and for the output layer, picked per machine.

On a CPU, a decoding step reads every weight once per token, so its speed is set by how fast the matrix-vector (or
few-row matrix) products stream the weights. torch's float32 `F.linear` / `torch.lstm_cell` go through MKL, which is
fast on Intel and several times slower on AMD; oneDNN (inside torch) and onnxruntime's MLAS are fast on both. So each
layer tries the kernels it can run on this machine, on its own weights, the first time it decodes a token (about
0.1-0.3 s, once per process and shape), keeps the fastest over batch 1 and 8, and records which and why (modules with
less than 256 KiB of weights keep ATen without measuring); where ATen measured faster at batch 1, one-row calls run
ATen's plain step without any of the checks below (no second copy):

- `"aten"`: ATen's one-step `torch.lstm_cell` (or `F.linear` for the output layer), on the weights as they are;
- `"onednn"`: one oneDNN product of `[W_ih | W_hh]` (packed once by `torch.ops.mkldnn._reorder_linear_weight`) with
  `[x | h]`, then the gate math;
- `"onnxruntime"`: one onnxruntime session per layer (concat, one `Gemm`, the gate math in the graph), only where
  `onnx` and `onnxruntime` are installed (`pip install lstmlm[onnx]`); imported lazily, never required.

The packed kernels hold copies of the weights (the float32 weights twice in memory while decoding). Every call checks
that the copies are current (`data_ptr()` and `_version` of each weight, its shape, the torch thread count) and
rebuilds them otherwise, so training, `load_state_dict` or any in-place edit between calls is picked up. They are used
only in inference (`not module.training`, no autograd), for plain float32 CPU tensors, on a module without hooks or
parametrizations (accelerate's offload hooks, PEFT's parametrized adapters, user hooks: all of these may change the
weights around the call); everything else runs the plain ATen path. The result equals ATen's step within float32
rounding (a different summation order: differences of a few 1e-7 relative, `tests/test_kernels.py` bounds them).

Set `module.decode_kernel = "auto" | "aten" | "onednn" | "onnxruntime"` on an `LSTMLMLayer` or the output layer
(`set_decode_kernel(model, "aten")` for all of them) to choose; the default is `"auto"`. `module.decode_kernel_choice`
holds `(kernel, reason)` once chosen.

When a packed copy is rebuilt: its weights' address, `_version` or shape changed (in-place ops, `copy_`,
`load_state_dict`, a new tensor), the thread count changed, any `torch.optim` optimizer stepped in this process (fused
optimizers, the Trainer's default, write the weights without bumping `_version`), or the module's `train()` / `eval()`
ran. The one write no check sees is through `.data` (`weight.data.copy_(...)`, outside autograd's bookkeeping by
design): call `forget_packed(module)` (or `model.eval()`) after one.

This file travels as remote code next to `modeling_lstmlm.py`: it imports only torch and transformers (numpy, onnx and
onnxruntime lazily, inside the functions that use them, each optional).
"""

import os
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers.utils import logging

logger = logging.get_logger(__name__)

KERNELS = ("aten", "onednn", "onnxruntime")
# Below this many bytes of weights a module keeps ATen (no benchmark, no copy): the weights sit in cache, and the
# fixed cost of a packed kernel's call (a few microseconds more than ATen's) is what would be measured.
SMALL_WEIGHTS_BYTES = 256 * 1024


def cpu_description() -> str:
    """`vendor model (isa)` of this CPU, for the recorded reason of a kernel choice."""
    vendor = model = ""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if vendor and model and flags:
                    break
    except OSError:
        model = platform.processor()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    return f"{vendor or 'unknown vendor'} {model or 'unknown model'} ({' '.join(isa) or 'no avx2'})"


_PLAIN_TYPES = (torch.Tensor, nn.Parameter)


def _plain(*tensors: torch.Tensor) -> bool:
    """Plain (no subclass: not a DTensor, fake or quantized tensor) strided float32 CPU tensors."""
    for t in tensors:
        if type(t) not in _PLAIN_TYPES or not t.is_cpu or t.dtype is not torch.float32 or t.layout is not torch.strided:
            return False
    return True


def fast_path_allowed(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """Whether a packed kernel may stand in for `module`'s plain computation on these tensors: inference (no autograd,
    eval mode, not being traced or compiled), no hooks or parametrizations on the module, plain float32 CPU tensors."""
    return (
        not module.training
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()  # ONNX export, torch.jit.trace: the graph must hold the plain computation
        and not torch.compiler.is_compiling()  # torch.compile, torch.export
        and not module._forward_hooks
        and not module._forward_pre_hooks
        # What `getattr(module, "_hf_hook", None) is None` and `not parametrize.is_parametrized(module)` say, at a
        # tenth of the cost (a missing attribute goes through nn.Module.__getattr__'s exception): accelerate sets
        # `_hf_hook` as a plain attribute, parametrizations live in the submodule "parametrizations".
        and "_hf_hook" not in module.__dict__
        and "parametrizations" not in module._modules
        and _plain(*tensors)
    )


# Optimizer steps taken in this process. Fused optimizers (`AdamW(fused=True)`, what the Trainer uses by default) update
# the weights in place without bumping their `_version`, so `_version` alone misses a training step: every packed copy
# also records this count and is rebuilt once any `torch.optim` optimizer has stepped since it was made.
_OPTIMIZER_STEPS = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _OPTIMIZER_STEPS
    _OPTIMIZER_STEPS += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def _key(tensors) -> tuple:
    """What a packed copy is checked against on every call: each weight's address, `_version` (bumped by in-place
    ops, `copy_`, `load_state_dict`) and shape, the thread count, and the process's optimizer steps."""
    weights = tuple((t.data_ptr(), t._version, t.shape) for t in tensors if t is not None)
    return weights + (torch.get_num_threads(), _OPTIMIZER_STEPS)


def forget_packed(module: nn.Module) -> None:
    """Drop `module`'s packed copies (rebuilt at its next inference call). Run on every `train()` / `eval()` of the
    modules that have them, and for writes the checks cannot see (`weight.data.copy_(...)` bypasses `_version`)."""
    slot = module.__dict__.get("_decode_kernel_slot")
    if slot is not None:
        slot.kernel = slot.key = slot.requested = None


# ----------------------------------------------------------------------------- kernels


def _gate_math_ifog(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM gate math on pre-activations in the order input, forget, output, cell (the packed kernels reorder the
    rows so that one sigmoid covers three gates)."""
    hidden = c.shape[1]
    sig = torch.sigmoid(gates[:, : 3 * hidden])
    g = torch.tanh(gates[:, 3 * hidden :])
    c = torch.addcmul(sig[:, hidden : 2 * hidden] * c, sig[:, :hidden], g)
    h = sig[:, 2 * hidden :] * torch.tanh(c)
    return h, c


def _ifgo_to_ifog(t: torch.Tensor) -> torch.Tensor:
    hidden = t.shape[0] // 4
    return torch.cat((t[: 2 * hidden], t[3 * hidden :], t[2 * hidden : 3 * hidden]))


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


class _OneDNNLinear:
    """`x @ W^T + b` with W packed once into oneDNN's blocked layout."""

    name = "onednn"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class _OneDNNStep:
    name = "onednn"

    def __init__(self, w_ih, w_hh, b_ih, b_hh):
        weight = _ifgo_to_ifog(torch.cat((w_ih.detach(), w_hh.detach()), dim=1))  # (4H, input + H)
        self.linear = _OneDNNLinear(weight, _ifgo_to_ifog(b_ih.detach() + b_hh.detach()))

    def __call__(self, x, h, c):
        return _gate_math_ifog(self.linear(torch.cat((x, h), dim=1)), c)


def _onnxruntime_modules():
    """`(onnx, onnxruntime)`, or None where either is missing (both are optional)."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnx, onnxruntime


def _ort_session(nodes, inputs, outputs, initializers):
    onnx, ort = _onnxruntime_modules()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    float_type = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "lstmlm_kernel",
        [helper.make_tensor_value_info(name, float_type, ["batch", size]) for name, size in inputs],
        [helper.make_tensor_value_info(name, float_type, ["batch", size]) for name, size in outputs],
        [numpy_helper.from_array(t.detach().contiguous().numpy(), name) for name, t in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _OrtLinear:
    name = "onnxruntime"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        helper = _onnxruntime_modules()[0].helper
        out_features, in_features = weight.shape
        init = {"weight": weight}
        if bias is not None:
            init["bias"] = bias
        node = helper.make_node("Gemm", ["x", "weight"] + (["bias"] if bias is not None else []), ["y"], transB=1)
        self.session = _ort_session([node], [("x", in_features)], [("y", out_features)], init)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["y"], {"x": x.contiguous().numpy()})[0])


class _OrtStep:
    name = "onnxruntime"

    def __init__(self, w_ih, w_hh, b_ih, b_hh):
        helper = _onnxruntime_modules()[0].helper
        hidden, input_size = w_hh.shape[1], w_ih.shape[1]
        make = helper.make_node
        nodes = [
            make("Concat", ["x", "h"], ["xh"], axis=1),
            make("Gemm", ["xh", "weight", "bias"], ["gates"], transB=1),
            make("Split", ["gates", "split"], ["i_", "f_", "g_", "o_"], axis=1),
            make("Sigmoid", ["i_"], ["i"]),
            make("Sigmoid", ["f_"], ["f"]),
            make("Tanh", ["g_"], ["g"]),
            make("Sigmoid", ["o_"], ["o"]),
            make("Mul", ["f", "c"], ["fc"]),
            make("Mul", ["i", "g"], ["ig"]),
            make("Add", ["fc", "ig"], ["c_out"]),
            make("Tanh", ["c_out"], ["tc"]),
            make("Mul", ["o", "tc"], ["h_out"]),
        ]
        init = {
            "weight": torch.cat((w_ih.detach(), w_hh.detach()), dim=1),  # (4H, input + H), gates i, f, g, o
            "bias": b_ih.detach() + b_hh.detach(),
            "split": torch.full((4,), hidden, dtype=torch.int64),
        }
        session_inputs = [("x", input_size), ("h", hidden), ("c", hidden)]
        self.session = _ort_session(nodes, session_inputs, [("h_out", hidden), ("c_out", hidden)], init)

    def __call__(self, x, h, c):
        feed = {"x": x.contiguous().numpy(), "h": h.contiguous().numpy(), "c": c.contiguous().numpy()}
        h, c = self.session.run(["h_out", "c_out"], feed)  # (output names given: run() skips listing them)
        return torch.from_numpy(h), torch.from_numpy(c)


class _AtenStep:
    name = "aten"

    def __init__(self, w_ih, w_hh, b_ih, b_hh):
        self.weights = (w_ih, w_hh, b_ih, b_hh)

    def __call__(self, x, h, c):
        return torch.lstm_cell(x, (h, c), *self.weights)


class _AtenLinear:
    name = "aten"

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def __call__(self, x):
        return F.linear(x, self.weight, self.bias)


_STEP_KERNELS = {"aten": _AtenStep, "onednn": _OneDNNStep, "onnxruntime": _OrtStep}
_LINEAR_KERNELS = {"aten": _AtenLinear, "onednn": _OneDNNLinear, "onnxruntime": _OrtLinear}


def available_kernels() -> tuple[str, ...]:
    """The kernels this machine's installation can run (`aten` always)."""
    names = ["aten"]
    if _onednn_available():
        names.append("onednn")
    if _onnxruntime_modules() is not None:
        names.append("onnxruntime")
    return tuple(names)


# ----------------------------------------------------------------------------- choice per machine

# (kind, shapes, threads) -> (kernel name, reason, one-row calls on ATen): each shape is measured once per process.
_CHOICES: dict[tuple, tuple[str, str, bool]] = {}


def _threads() -> int:
    """torch's thread count, capped at the CPUs this process may run on (spinning onnxruntime threads sharing a core
    are several times slower than one thread)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), usable))


def _time_candidates(candidates: dict, make_args, batch_sizes=(1, 8), rounds: int = 7, calls: int = 4) -> dict:
    """Seconds per call of each candidate at each batch size: the fastest of `rounds` interleaved rounds (other work
    on the machine only ever adds time, so the minimum is the best estimate of a kernel's own cost)."""
    times = {name: {b: [] for b in batch_sizes} for name in candidates}
    for batch in batch_sizes:
        args = make_args(batch)
        for kernel in candidates.values():  # warm-up (first-call allocations, lazy initialisation, caches)
            for _ in range(2):
                kernel(*args)
        for _ in range(rounds):
            for name, kernel in candidates.items():
                start = time.perf_counter()
                for _ in range(calls):
                    kernel(*args)
                times[name][batch].append((time.perf_counter() - start) / calls)
    return {name: {b: min(t) for b, t in per_batch.items()} for name, per_batch in times.items()}


def _choose(kind: str, key: tuple, factories: dict, weights: tuple, make_args) -> tuple[str, str, bool]:
    """Measure every available kernel on these weights at batch 1 and 8 (the time relative to `aten`, summed over the
    two batch sizes, decides), keep the fastest, and say why; and whether one-row calls run ATen instead (where ATen
    measured faster at batch 1; no second packed copy is ever made)."""
    choice = _CHOICES.get(key)
    if choice is not None:
        return choice
    candidates = {}
    for name in available_kernels():
        try:
            candidates[name] = factories[name](*weights)
        except Exception as error:  # noqa: BLE001 - a kernel that cannot be built here is simply not a candidate
            logger.info(f"{kind} kernel {name!r} unavailable: {error}")
    with torch.no_grad():
        times = _time_candidates(candidates, lambda batch: make_args(weights, batch))
    base = times["aten"]
    score = {name: sum(t[b] / base[b] for b in t) for name, t in times.items()}
    best = min(score, key=score.get)
    measured = "; ".join(
        f"{name} " + " / ".join(f"{t[b] * 1e3:.3f}" for b in sorted(t)) + " ms" for name, t in times.items()
    )
    reason = f"fastest on {cpu_description()} at batch 1 / 8 ({measured})"
    one_row_aten = best != "aten" and base[1] < times[best][1]
    if one_row_aten:
        reason += "; one-row calls run aten (faster at batch 1)"
    _CHOICES[key] = (best, reason, one_row_aten)
    logger.info(f"{kind} {tuple(key[1])}: using the {best!r} kernel, {reason}")
    return best, reason, one_row_aten


class _KernelSlot:
    """Per-module state: the kernel requested and chosen, the chosen kernel's instance (None for ATen), the
    staleness key of the weights it was built from, and whether one-row calls run ATen instead."""

    __slots__ = ("requested", "name", "kernel", "key", "one_row_aten")

    def __init__(self):
        self.requested = self.name = self.kernel = self.key = None
        self.one_row_aten = False

    def __reduce__(self):  # deepcopy and pickle of a module start with an empty slot (sessions do not copy)
        return (_KernelSlot, ())


def _resolve(module: nn.Module, requested: str, kind: str, factories: dict, weights: tuple, make_args) -> tuple:
    """The kernel for `module` and whether one-row calls run ATen instead: `requested`, or for "auto" ATen under
    `SMALL_WEIGHTS_BYTES` and else the fastest measured (once per process, kind and shapes); records
    `decode_kernel_choice`."""
    one_row_aten = False
    if requested == "auto":
        nbytes = sum(w.numel() * w.element_size() for w in weights if w is not None)
        if nbytes < SMALL_WEIGHTS_BYTES:
            name, reason = "aten", f"weights of {nbytes} bytes (< {SMALL_WEIGHTS_BYTES}): not worth a packed copy"
        else:
            shapes = tuple(tuple(w.shape) for w in weights if w is not None)
            key = (kind, shapes, torch.get_num_threads())
            name, reason, one_row_aten = _choose(kind, key, factories, weights, make_args)
    elif requested in available_kernels():
        name, reason = requested, "set by `decode_kernel`"
    elif requested in KERNELS:
        raise ValueError(
            f"`decode_kernel={requested!r}` is not available here (available: {available_kernels()}; onnxruntime "
            "needs `pip install onnx onnxruntime`)"
        )
    else:
        raise ValueError(f"`decode_kernel` must be 'auto' or one of {KERNELS}, got {requested!r}")
    module.__dict__["decode_kernel_choice"] = (name, reason)
    return name, one_row_aten


def _kernel_for(module: nn.Module, kind: str, factories: dict, weights: tuple, make_args, rows: int):
    """The packed kernel to run for `module` on `weights` (rebuilt if they changed) for `rows` rows, or None for
    ATen. Runs on every decoding step: the checks are a few attribute reads and the weights' `data_ptr()` /
    `_version`. `make_args(weights, batch)` gives the inputs to time the candidates on, when there is a choice to
    make."""
    slot = module.__dict__.get("_decode_kernel_slot")
    if slot is None:
        slot = module.__dict__["_decode_kernel_slot"] = _KernelSlot()
    requested = getattr(module, "decode_kernel", "auto")
    key = _key(weights)
    if slot.requested != requested or slot.key != key:
        # First call, a new request, or the weights changed: choose again (cached per shape for "auto"), rebuild.
        slot.kernel = None  # free the stale copy before packing a new one
        slot.key = None
        slot.name, slot.one_row_aten = _resolve(module, requested, kind, factories, weights, make_args)
        slot.requested = requested
        if slot.name != "aten":
            slot.kernel = factories[slot.name](*weights)
        slot.key = key
    return None if rows == 1 and slot.one_row_aten else slot.kernel


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def _one_row_aten(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether this call, on one row, goes straight to the plain ATen path: "auto" measured ATen fastest at batch 1
    for this module (same request, same thread count). The plain path needs none of the checks, so none run (they
    cost a few percent of a token at batch 1)."""
    slot = module.__dict__.get("_decode_kernel_slot")
    return (
        slot is not None
        and slot.one_row_aten
        and slot.key is not None
        and slot.requested == getattr(module, "decode_kernel", "auto")
        and slot.key[-2] == torch.get_num_threads()
        and not torch.jit.is_tracing()  # (a traced shape must not become a constant)
        and _rows(x) == 1
    )


def lstm_step(layer: nn.Module, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weights) -> tuple | None:
    """The new `(h, c)` of one time step through the kernel chosen for `layer`, or None where only the plain path may
    run (see `fast_path_allowed`). `weights` are the layer's `[w_ih, w_hh, b_ih, b_hh]` as its plain step reads them."""
    if _one_row_aten(layer, x):
        return None
    h, c = state
    if x.dim() != 2 or not fast_path_allowed(layer, x, h, c, *weights):
        return None
    kernel = _kernel_for(layer, "LSTM step", _STEP_KERNELS, weights, _step_args, x.shape[0])
    return None if kernel is None else kernel(x, h, c)


def _step_args(weights, batch: int) -> tuple[torch.Tensor, ...]:
    """Random `(x, h, c)` for timing a step kernel on `weights`, from a private generator (choosing a kernel never
    moves the global RNG, so sampling stays seeded)."""
    generator = torch.Generator().manual_seed(batch)
    w_ih, w_hh = weights[0], weights[1]
    return tuple(torch.randn(batch, n, generator=generator) for n in (w_ih.shape[1], w_hh.shape[1], w_hh.shape[1]))


def _linear_args(weights, batch: int) -> tuple[torch.Tensor]:
    return (torch.randn(batch, weights[0].shape[1], generator=torch.Generator().manual_seed(batch)),)


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """`module(x)` for an `nn.Linear` through the kernel chosen for it, or None where only the plain path may run."""
    if _one_row_aten(module, x):
        return None
    weight, bias = module.weight, module.bias
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not fast_path_allowed(module, *tensors):
        return None
    kernel = _kernel_for(module, "linear", _LINEAR_KERNELS, (weight, bias), _linear_args, _rows(x))
    if kernel is None:
        return None
    shape = x.shape
    return kernel(x.reshape(-1, shape[-1])).reshape(*shape[:-1], weight.shape[0])


class PackedKernelModule:
    """Mixin for a module whose inference forward may run a packed kernel (`LSTMLMLayer`, `DecodingLinear`): the
    `decode_kernel` setting ("auto": measure and pick; or one of `KERNELS`; the choice and its reason land in
    `decode_kernel_choice`), and packed copies dropped on every `train()` / `eval()`, a switch that starts or ends a
    phase in which the weights may change."""

    decode_kernel: str = "auto"

    def train(self, mode: bool = True):
        forget_packed(self)
        return super().train(mode)


class DecodingLinear(PackedKernelModule, nn.Linear):
    """An `nn.Linear` (same parameters, same state dict) whose inference forward runs the kernel chosen for this
    machine (see `linear`); training, autograd, hooks, parametrizations and non-float32 or non-CPU tensors take
    `F.linear` as any `nn.Linear` does. The language model's output layer is one.

    Example:

    ```python
    >>> head = DecodingLinear(512, 8192).eval()
    >>> with torch.no_grad():
    ...     logits = head(torch.randn(1, 1, 512))
    >>> head.decode_kernel_choice[0] in available_kernels()
    True
    ```
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(self, x)
        return out if out is not None else F.linear(x, self.weight, self.bias)


def set_decode_kernel(model: nn.Module, kernel: str = "auto") -> None:
    """Set `decode_kernel` on every module of `model` that has one (the LSTM layers, the output layer): `"auto"`
    (measure and pick, the default) or one of `KERNELS`."""
    if kernel != "auto" and kernel not in KERNELS:
        raise ValueError(f"`kernel` must be 'auto' or one of {KERNELS}, got {kernel!r}")
    for module in model.modules():
        if hasattr(type(module), "decode_kernel"):
            module.decode_kernel = kernel


def decode_kernel_choices(model: nn.Module) -> dict[str, tuple[str, str]]:
    """`{module name: (kernel, reason)}` for every module of `model` that has chosen a decoding kernel so far."""
    return {
        name: module.__dict__["decode_kernel_choice"]
        for name, module in model.named_modules()
        if "decode_kernel_choice" in module.__dict__
    }
