"""ONNX export of an LSTMLM causal LM for generation outside PyTorch, and a greedy loop on onnxruntime.

Two graphs, the LSTM state as explicit inputs and outputs:

- `prefill.onnx`: `(input_ids (batch, seq), attention_mask (batch, seq)) -> (logits (batch, vocab), h, c)`, the
  logits at each row's last real token and the state after it (`h`, `c`: `(num_layers, batch, hidden)`). Padding may
  sit anywhere, as in the PyTorch model: each row's real tokens are moved to the front (a stable partition) and the
  LSTMs run with per-row lengths (the ONNX LSTM op's `sequence_lens`), so padding never touches the state.
- `decode_step.onnx`: `(input_ids (batch, 1), h, c) -> (logits (batch, vocab), h, c)`, one token on the state, traced
  through the model's own layers (each `LSTMLMLayer.step`), so the graph is the model's decoding step.

Batch and sequence axes are dynamic. Exported with torch's TorchScript-based exporter (`dynamo=False`): the dynamo
exporter needs `onnxscript`, which this project does not depend on, and the TorchScript exporter maps packed
sequences onto `sequence_lens`. `greedy_generate` reproduces `model.generate(..., do_sample=False)` token for token
(same stopping on `eos_token_id`, finished rows filled with `pad_token_id`).

Example:

```python
>>> from modeling_lstmlm.onnx_export import OnnxLSTMLM, export_onnx
>>> export_onnx(model, "runs/demo-onnx")
>>> generator = OnnxLSTMLM("runs/demo-onnx")
>>> generator.greedy_generate(input_ids, max_new_tokens=20)  # numpy (batch, prompt + new) like generate()
```

Int8 (the fastest CPU path): `export_onnx(model, dir, quantize="int8")`, or `quantize_onnx(float_dir, int8_dir)` on
a folder already exported, runs onnxruntime's maintained dynamic quantizer (`onnxruntime.quantization.quantize_dynamic`)
on both graphs: int8 weights, one scale per output channel, activations quantized to uint8 on each call. It quantizes
the LSTM op of the prefill (`DynamicQuantizeLSTM`), every MatMul with a constant weight (`MatMulInteger`; the
exporter writes `F.linear` as `Gemm`, which the quantizer skips, so those nodes are first rewritten as `MatMul` + `Add`
on a transposed copy of the weight) and, by default, the embedding `Gather` (uint8, one scale for the table). A tied
embedding/output weight thus becomes two 8-bit tables: the Gather's `(vocab, embedding)` and the output MatMul's
`(embedding, vocab)`. `onnx_config.json` records the settings under `"quantization"`; `OnnxLSTMLM` loads the folder
as it is. `evaluate_text_onnx(generator, tokenizer, text)` gives the token- and word-level perplexity of held-out
text through the decode-step graph (an `evaluation.PerplexityResult`, words counted as `data.count_words` does), to
compare the float and int8 folders; `compare_onnx` gives the largest differences of their prefill and step outputs.

```python
>>> export_onnx(model, "runs/demo-onnx-int8", quantize="int8")
>>> int8 = OnnxLSTMLM("runs/demo-onnx-int8")
>>> evaluate_text_onnx(int8, tokenizer, text).word_perplexity
```
"""

from __future__ import annotations

import json
import logging as std_logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers.utils import logging

from ._extras import require
from .data import count_words, tokenize_text
from .evaluation import PerplexityResult

logger = logging.get_logger(__name__)

PREFILL_FILE = "prefill.onnx"
DECODE_STEP_FILE = "decode_step.onnx"
CONFIG_FILE = "onnx_config.json"
DEFAULT_OPSET = 17
FROM_CONFIG = "from-config"  # default of `greedy_generate`'s special token ids: take them from onnx_config.json
INT8 = "int8"
QUANTIZE_METHODS = (INT8,)


def _check_exportable(model) -> None:
    if not hasattr(model, "lm_head") or not hasattr(model, "model"):
        raise ValueError(f"`model` must be an LSTMLMForCausalLM, got {type(model).__name__}")
    if getattr(model.config, "quantization", None) is not None:
        raise ValueError("ONNX export takes a float model; this one is quantized (`config.quantization` is set)")


class OnnxDecodeStep(nn.Module):
    """One token on an explicit state: `(input_ids (B, 1), h (L, B, H), c (L, B, H)) -> (logits (B, V), h, c)`.

    Calls the wrapped model's own modules (embedding, each `LSTMLMLayer` on one token, i.e. its `step`, projection,
    head), so the graph is the model's decoding step: no second copy of the recurrence.
    """

    def __init__(self, model):
        super().__init__()
        _check_exportable(model)
        self.lm = model

    def forward(self, input_ids: torch.LongTensor, h: torch.Tensor, c: torch.Tensor):
        backbone = self.lm.model
        x = backbone.embed_tokens(input_ids)  # (batch, 1, embedding_size)
        new_h, new_c = [], []
        for layer_idx, layer in enumerate(backbone.layers):
            x, (h_new, c_new) = layer(x, (h[layer_idx], c[layer_idx]))  # (batch, 1, hidden)
            new_h.append(h_new)
            new_c.append(c_new)
        top = backbone.proj(x[:, 0]) if backbone.proj is not None else x[:, 0]
        return self.lm.lm_head(top), torch.stack(new_h), torch.stack(new_c)  # (batch, vocab), (L, batch, hidden) x 2


class OnnxPrefill(nn.Module):
    """A prompt from the zero state: `(input_ids (B, T), attention_mask (B, T)) -> (logits (B, V), h, c)`.

    The logits are those of each row's last real token; padding (anywhere) never touches the state.
    """

    def __init__(self, model):
        super().__init__()
        _check_exportable(model)
        self.lm = model

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor):
        backbone = self.lm.model
        real = attention_mask.to(torch.int64)  # (batch, seq)
        lengths = real.sum(dim=1)  # (batch,)
        # A stable partition without a sort: real tokens to the front in order, padding behind them.
        dest = torch.where(real.bool(), real.cumsum(1) - 1, lengths[:, None] + (1 - real).cumsum(1) - 1)
        x = backbone.embed_tokens(input_ids)  # (batch, seq, embedding_size)
        x = torch.zeros_like(x).scatter(1, dest[..., None].expand_as(x), x)
        run_lengths = lengths.clamp(min=1)
        zeros = x.new_zeros(x.shape[0], self.lm.config.hidden_size)  # (batch, hidden), the batch axis stays dynamic
        hs, cs = [], []
        for layer in backbone.layers:
            packed = pack_padded_sequence(x, run_lengths, batch_first=True, enforce_sorted=False)
            out, (h, c) = layer(packed, (zeros, zeros))  # the model's own layer, on a packed sequence
            x, _ = pad_packed_sequence(out, batch_first=True)  # (batch, max length, hidden), zeros past each length
            hs.append(h)
            cs.append(c)
        last = (run_lengths - 1)[:, None, None].expand(-1, 1, x.shape[-1])
        top = x.gather(1, last)[:, 0]  # (batch, hidden) at each row's last real token
        top = backbone.proj(top) if backbone.proj is not None else top
        has_tokens = (lengths > 0)[None, :, None]  # rows without a real token keep the zero state
        h = torch.where(has_tokens, torch.stack(hs), 0.0)
        c = torch.where(has_tokens, torch.stack(cs), 0.0)
        return self.lm.lm_head(top), h, c


def export_onnx(
    model, output_dir: str | Path, opset_version: int = DEFAULT_OPSET, quantize: str | None = None
) -> dict[str, Path]:
    """Write `prefill.onnx`, `decode_step.onnx` and `onnx_config.json` (sizes and special token ids) to `output_dir`.

    `quantize="int8"` writes int8 graphs instead: the float export goes to a temporary folder and `quantize_onnx`
    (with its defaults) writes `output_dir` from it. Returns the paths by name (`prefill`, `decode_step`, `config`).
    """
    _check_exportable(model)
    require("onnx", "onnx", "ONNX export")  # torch.onnx.export writes its graphs with it
    if quantize is not None:
        if quantize not in QUANTIZE_METHODS:
            raise ValueError(f"`quantize` must be None or one of {QUANTIZE_METHODS}, got {quantize!r}")
        with tempfile.TemporaryDirectory() as float_dir:
            export_onnx(model, float_dir, opset_version=opset_version)
            return quantize_onnx(float_dir, output_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]], device=device) % config.vocab_size  # (2, 3), example inputs only
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]], device=device)
    state = torch.zeros(config.num_hidden_layers, 2, config.hidden_size, device=device)
    batch = "batch"
    paths = _folder_paths(output_dir)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated and that it traces ints as constants: fine here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                OnnxPrefill(model),
                (ids, mask),
                str(paths["prefill"]),
                dynamo=False,
                opset_version=opset_version,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits", "h", "c"],
                dynamic_axes={
                    "input_ids": {0: batch, 1: "sequence"},
                    "attention_mask": {0: batch, 1: "sequence"},
                    "logits": {0: batch},
                    "h": {1: batch},
                    "c": {1: batch},
                },
            )
            torch.onnx.export(
                OnnxDecodeStep(model),
                (ids[:, -1:], state, state),
                str(paths["decode_step"]),
                dynamo=False,
                opset_version=opset_version,
                input_names=["input_ids", "h", "c"],
                output_names=["logits", "h_out", "c_out"],
                dynamic_axes={
                    "input_ids": {0: batch},
                    "h": {1: batch},
                    "c": {1: batch},
                    "logits": {0: batch},
                    "h_out": {1: batch},
                    "c_out": {1: batch},
                },
            )
    finally:
        model.train(was_training)
    meta = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "opset_version": opset_version,
        "prefill_inputs": ["input_ids", "attention_mask"],
        "decode_step_inputs": ["input_ids", "h", "c"],
    }
    paths["config"].write_text(json.dumps(meta, indent=2) + "\n")
    logger.info(f"Exported {PREFILL_FILE} and {DECODE_STEP_FILE} to {output_dir}")
    return paths


def _folder_paths(folder: Path) -> dict[str, Path]:
    return {"prefill": folder / PREFILL_FILE, "decode_step": folder / DECODE_STEP_FILE, "config": folder / CONFIG_FILE}


def _check_onnx_folder(folder: Path) -> dict:
    """The folder's onnx_config.json, or an OSError naming what is missing."""
    if not folder.is_dir():
        raise OSError(f"{folder} is not an ONNX export of this model (no such folder)")
    missing = [name for name in (PREFILL_FILE, DECODE_STEP_FILE, CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise OSError(f"{folder} is not an ONNX export of this model (missing {', '.join(missing)})")
    return json.loads((folder / CONFIG_FILE).read_text())


def _gemm_to_matmul(graph_model) -> int:
    """Rewrite each `Gemm(A, B, C)` with a constant `B` (alpha = beta = 1, A not transposed) as `MatMul(A, B') + C`,
    `B'` the weight in `(in, out)` layout (transposed once, stored under a new name). onnxruntime's dynamic quantizer
    has integer kernels for MatMul but not Gemm. A weight also read by another node (the tied embedding's Gather) keeps
    its original for that node. Returns the number of nodes rewritten; the graph is changed in place."""
    onnx = require("onnx", "onnx", "ONNX export")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    graph = graph_model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    transposed: dict[str, str] = {}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        rewritable = (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and (attrs.get("beta", 1.0) == 1.0 or len(node.input) < 3 or not node.input[2])
        )
        if not rewritable:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            if weight not in transposed:
                name = f"{weight}_in_out"
                while name in initializers:
                    name += "_"
                array = numpy_helper.to_array(initializers[weight]).T.copy()  # (out, in) -> (in, out)
                graph.initializer.append(numpy_helper.from_array(array, name))
                initializers[name] = graph.initializer[-1]
                transposed[weight] = name
            weight = transposed[weight]
        output = node.output[0]
        has_bias = len(node.input) > 2 and bool(node.input[2])
        matmul_output = f"{output}_matmul" if has_bias else output
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [matmul_output], f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [matmul_output, node.input[2]], [output], f"{node.name}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.input}
    unused = [tensor for tensor in graph.initializer if tensor.name in transposed and tensor.name not in used]
    for tensor in unused:  # the (out, in) originals nobody reads any more
        graph.initializer.remove(tensor)
    return rewritten


class _DropRecordsContaining(std_logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: std_logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextmanager
def _without_preprocess_hint():
    """quantize_dynamic warns on the root logger, for every graph, that onnxruntime's optional pre-processing (shape
    inference and graph fusions, meant for static quantization of vision models) was not run; it changes nothing for
    these graphs (quantize_dynamic runs shape inference itself), so the hint is dropped."""
    hint = _DropRecordsContaining("pre-processing before quantization")
    root = std_logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _eight_bit_initializers(path: Path) -> list[str]:
    onnx = require("onnx", "onnx", "Reading ONNX graphs")

    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return [tensor.name for tensor in onnx.load(str(path)).graph.initializer if tensor.data_type in eight_bit]


def cpu_has_vnni() -> bool:
    """Whether this CPU has the VNNI int8 dot-product instructions (or AMX), read from /proc/cpuinfo's flags.

    False where the flags cannot be read (not Linux): 7-bit weights are then the safe choice.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def quantize_onnx(
    src_dir: str | Path,
    dst_dir: str | Path,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    quantize_embedding: bool = True,
) -> dict[str, Path]:
    """Write an int8 copy of a float ONNX folder (from `export_onnx`) with onnxruntime's dynamic quantizer.

    Args:
        src_dir: a float folder written by `export_onnx`.
        dst_dir: where to write the int8 `prefill.onnx`, `decode_step.onnx` and `onnx_config.json` (must differ from
            `src_dir`).
        per_channel: one weight scale per output channel (gate row of the LSTM op, column of a MatMul) instead of one
            per tensor.
        reduce_range: 7-bit weights; onnxruntime advises it for CPUs without VNNI, where its u8 x s8 kernels can
            saturate (VNNI and AMX CPUs need it not). None (the default) decides by this CPU: on when it lacks VNNI
            (measured on an AVX2 AMD EPYC: 8-bit weights put the int8 logits 10% of their range off the float ones,
            7-bit weights 1-2%). The choice is recorded in `onnx_config.json`.
        quantize_embedding: also store the embedding table in 8 bits (the Gather's input; one scale for the table).

    Raises:
        OSError: `src_dir` lacks one of the files.
        ValueError: `src_dir` is already quantized (its config says so, or its graphs hold 8-bit weights), or `dst_dir`
            is `src_dir`.

    Returns the written paths by name (`prefill`, `decode_step`, `config`).
    """
    onnx = require("onnx", "onnx", "ONNX int8 quantization")
    onnxruntime = require("onnxruntime", "onnx", "ONNX int8 quantization")
    quantization = require("onnxruntime.quantization", "onnx", "ONNX int8 quantization")
    QuantType, quantize_dynamic = quantization.QuantType, quantization.quantize_dynamic

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    config = _check_onnx_folder(src_dir)
    if config.get("quantization"):
        raise ValueError(
            f"{src_dir} is already quantized ({config['quantization']['method']}); quantize_onnx takes a float export"
        )
    for name in (PREFILL_FILE, DECODE_STEP_FILE):
        eight_bit = _eight_bit_initializers(src_dir / name)
        if eight_bit:
            raise ValueError(
                f"{src_dir / name} already holds 8-bit weights ({', '.join(eight_bit[:3])}); "
                "quantize_onnx takes a float export"
            )
    if dst_dir.exists() and dst_dir.resolve() == src_dir.resolve():
        raise ValueError(f"`dst_dir` must differ from `src_dir` (both are {src_dir})")
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    op_types = ["LSTM", "MatMul"] + (["Gather"] if quantize_embedding else [])
    dst_dir.mkdir(parents=True, exist_ok=True)
    paths = _folder_paths(dst_dir)
    rewritten = {}
    for key in ("prefill", "decode_step"):
        graph_model = onnx.load(str(src_dir / paths[key].name))
        rewritten[key] = _gemm_to_matmul(graph_model)
        with _without_preprocess_hint():
            quantize_dynamic(
                graph_model,
                paths[key],
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
            )
    config["quantization"] = {
        "method": INT8,
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "onnxruntime_version": onnxruntime.__version__,
        "weights": "int8, symmetric" + ("; embedding uint8, one scale and zero point" if quantize_embedding else ""),
        "activations": "uint8, quantized on each call (dynamic)",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "quantize_embedding": quantize_embedding,
        "op_types": op_types,
        "gemm_rewritten_as_matmul": rewritten,
    }
    paths["config"].write_text(json.dumps(config, indent=2) + "\n")
    logger.info(f"Wrote int8 {PREFILL_FILE} and {DECODE_STEP_FILE} to {dst_dir} (from {src_dir})")
    return paths


def onnx_weight_summary(folder: str | Path) -> dict[str, dict]:
    """Per graph of an ONNX folder: the file's bytes and its initializers' bytes by dtype (`{"float32": n, ...}`)."""
    onnx = require("onnx", "onnx", "Reading ONNX graphs")

    folder = Path(folder)
    _check_onnx_folder(folder)
    summary = {}
    for name in (PREFILL_FILE, DECODE_STEP_FILE):
        by_dtype: dict[str, int] = {}
        for tensor in onnx.load(str(folder / name)).graph.initializer:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
            size = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
            by_dtype[dtype.name] = by_dtype.get(dtype.name, 0) + size
        summary[name] = {"file_bytes": (folder / name).stat().st_size, "initializer_bytes": by_dtype}
    return summary


class OnnxLSTMLM:
    """The exported graphs on onnxruntime: `prefill`, `step`, and a greedy loop equal to `generate(do_sample=False)`.

    Args:
        folder: a folder written by `export_onnx`.
        num_threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, folder: str | Path, num_threads: int = 0):
        ort = require("onnxruntime", "onnx", "Running ONNX graphs")

        folder = Path(folder)
        self.config = _check_onnx_folder(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.prefill_session = ort.InferenceSession(str(folder / PREFILL_FILE), options, providers=providers)
        self.step_session = ort.InferenceSession(str(folder / DECODE_STEP_FILE), options, providers=providers)

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None):
        """Logits `(batch, vocab)` of each row's last real token, and the state `h`, `c` `(layers, batch, hidden)`."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` must have shape (batch, sequence) with sequence >= 1, got {input_ids.shape}")
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {input_ids.shape}, got {attention_mask.shape}"
            )
        return self.prefill_session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})

    def step(self, input_ids: np.ndarray, h: np.ndarray, c: np.ndarray):
        """One token per row (`(batch, 1)`) on the state; returns logits `(batch, vocab)` and the new `h`, `c`."""
        return self.step_session.run(None, {"input_ids": np.asarray(input_ids, dtype=np.int64), "h": h, "c": c})

    def greedy_generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        max_new_tokens: int = 20,
        eos_token_id: int | list[int] | None | str = FROM_CONFIG,
        pad_token_id: int | None | str = FROM_CONFIG,
    ) -> np.ndarray:
        """Greedy decoding as `generate(do_sample=False)` does it: returns `(batch, prompt + new)` token ids, stopping
        early once every row has produced an end token; rows that finished get `pad_token_id` afterwards.
        `eos_token_id=None` never stops early; the special ids default to the exported model's."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}")
        eos = self.config["eos_token_id"] if eos_token_id == FROM_CONFIG else eos_token_id
        pad = self.config["pad_token_id"] if pad_token_id == FROM_CONFIG else pad_token_id
        eos_ids = np.asarray([] if eos is None else (eos if isinstance(eos, list) else [eos]), dtype=np.int64)
        if eos_ids.size and pad is None:
            pad = int(eos_ids[0])  # what generate does when only an end token is set
        sequences = np.asarray(input_ids, dtype=np.int64)
        logits, h, c = self.prefill(sequences, attention_mask)
        unfinished = np.ones(sequences.shape[0], dtype=bool)
        for step in range(max_new_tokens):
            if step > 0:
                logits, h, c = self.step(sequences[:, -1:], h, c)
            next_tokens = logits.argmax(axis=-1)
            if eos_ids.size:
                next_tokens = np.where(unfinished, next_tokens, pad)
            sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)
            if eos_ids.size:
                unfinished &= ~np.isin(next_tokens, eos_ids)
                if not unfinished.any():
                    break
        return sequences


def compare_with_model(
    model, generator: OnnxLSTMLM, input_ids: torch.LongTensor, attention_mask=None, max_new_tokens: int = 20
) -> dict:
    """Run the same prompts through PyTorch and onnxruntime: the largest differences of the prefill outputs and of
    one decoding step, and whether greedy decoding gives the same ids (`model.generate(do_sample=False)` against
    `generator.greedy_generate`). Prompts must be left-padded (generate's convention) or not padded.
    """
    model.eval()
    input_ids = torch.as_tensor(input_ids)
    mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask, use_cache=True)
        states = [out.cache.get_state(i) for i in range(model.config.num_hidden_layers)]
        ref_h = torch.stack([h for h, _ in states]).numpy()
        ref_c = torch.stack([c for _, c in states]).numpy()
        ref_logits = out.logits[:, -1].float().numpy()  # the last column: real tokens for left padding
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
        step_logits = model(token, cache=out.cache, use_cache=True).logits[:, -1].float().numpy()
    logits, h, c = generator.prefill(input_ids.numpy(), mask.numpy())
    onnx_step_logits, _, _ = generator.step(token.numpy(), h, c)
    expected = model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    got = generator.greedy_generate(input_ids.numpy(), mask.numpy(), max_new_tokens=max_new_tokens)
    return {
        "prefill_logits_max_abs_diff": float(np.abs(logits - ref_logits).max()),
        "prefill_state_max_abs_diff": float(max(np.abs(h - ref_h).max(), np.abs(c - ref_c).max())),
        "step_logits_max_abs_diff": float(np.abs(onnx_step_logits - step_logits).max()),
        "greedy_ids_equal": expected.shape == got.shape and bool((expected.numpy() == got).all()),
        "pytorch_ids": expected.tolist(),
        "onnx_ids": got.tolist(),
    }


def compare_onnx(
    reference: OnnxLSTMLM,
    candidate: OnnxLSTMLM,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    max_new_tokens: int = 20,
) -> dict:
    """Two ONNX folders on the same prompts (e.g. float `reference`, int8 `candidate`): the largest differences of the
    prefill outputs, of one decoding step (each on its own prefill state, and both on the reference's state, which
    isolates the decode-step graph), the logits' range (the scale those differences read against), how many rows agree
    on the prefill's top token, and whether greedy decoding gives the same ids.
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    ref_logits, ref_h, ref_c = reference.prefill(input_ids, mask)
    logits, h, c = candidate.prefill(input_ids, mask)
    token = ref_logits.argmax(-1)[:, None]  # (batch, 1), the same next token for both
    ref_step, _, _ = reference.step(token, ref_h, ref_c)
    step, _, _ = candidate.step(token, h, c)
    step_same_state, _, _ = candidate.step(token, ref_h, ref_c)
    ref_ids = reference.greedy_generate(input_ids, mask, max_new_tokens=max_new_tokens)
    got_ids = candidate.greedy_generate(input_ids, mask, max_new_tokens=max_new_tokens)
    return {
        "prefill_logits_max_abs_diff": float(np.abs(logits - ref_logits).max()),
        "prefill_h_max_abs_diff": float(np.abs(h - ref_h).max()),
        "prefill_c_max_abs_diff": float(np.abs(c - ref_c).max()),
        "step_logits_max_abs_diff": float(np.abs(step - ref_step).max()),
        "step_same_state_logits_max_abs_diff": float(np.abs(step_same_state - ref_step).max()),
        "logits_range": float(min(np.ptp(ref_logits, axis=-1).min(), np.ptp(ref_step, axis=-1).min())),
        "prefill_top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()),
        "greedy_ids_equal": ref_ids.shape == got_ids.shape and bool((ref_ids == got_ids).all()),
        "reference_ids": ref_ids.tolist(),
        "candidate_ids": got_ids.tolist(),
    }


def score_stream_onnx(generator: OnnxLSTMLM, input_ids, show_progress: bool = False) -> PerplexityResult:
    """Summed NLL of `input_ids[1:]` through the decode-step graph, one token at a time from the zero state (batch 1),
    so every token is predicted from the whole stream before it: `evaluation.score_stream` with `window=1`, on
    onnxruntime. The prefill graph is not used (it returns the last position's logits only).

    Args:
        generator: an `OnnxLSTMLM` (float or int8 folder).
        input_ids: the stream, shape `(num_tokens,)`, usually `<bos> + tokens(text)` (`data.tokenize_text`).
        show_progress: show a progress bar.
    """
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise ValueError(f"Need at least 2 tokens to score (1 context + 1 target), got {ids.size}")
    state_shape = (generator.config["num_hidden_layers"], 1, generator.config["hidden_size"])
    h = np.zeros(state_shape, dtype=np.float32)
    c = np.zeros(state_shape, dtype=np.float32)
    nll_sum = 0.0
    for position in logging.tqdm(range(ids.size - 1), desc="Scoring (onnxruntime)", disable=not show_progress):
        logits, h, c = generator.step(ids[position : position + 1, None], h, c)  # (1, vocab)
        row = logits[0].astype(np.float64)
        top = row.max()
        nll_sum += top + np.log(np.exp(row - top).sum()) - row[ids[position + 1]]
    return PerplexityResult(nll_sum=float(nll_sum), num_tokens=ids.size - 1)


def evaluate_text_onnx(
    generator: OnnxLSTMLM, tokenizer, text: str, cache_dir: str | None = None, show_progress: bool = False
) -> PerplexityResult:
    """Token- and word-level perplexity of `text` on onnxruntime (scored as `<bos> + tokens(text)`, every text token
    predicted; words counted by `data.count_words`), as `evaluation.evaluate_text(model, ..., window=1)` scores it."""
    input_ids = tokenize_text(text, tokenizer, cache_dir=cache_dir)
    result = score_stream_onnx(generator, input_ids, show_progress=show_progress)
    result.num_words = count_words(text)
    return result


__all__ = [
    "FROM_CONFIG",
    "INT8",
    "QUANTIZE_METHODS",
    "OnnxDecodeStep",
    "OnnxLSTMLM",
    "OnnxPrefill",
    "compare_onnx",
    "compare_with_model",
    "evaluate_text_onnx",
    "export_onnx",
    "onnx_weight_summary",
    "quantize_onnx",
    "score_stream_onnx",
]
