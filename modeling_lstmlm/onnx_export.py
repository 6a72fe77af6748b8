"""ONNX export of an LSTMLM causal LM for generation outside PyTorch, and a greedy loop on onnxruntime.

Two graphs, the LSTM state as explicit inputs and outputs:

- `prefill.onnx`: `(input_ids (batch, seq), attention_mask (batch, seq)) -> (logits (batch, vocab), h, c)`, the
  logits at each row's last real token and the state after it (`h`, `c`: `(num_layers, batch, hidden)`). Padding may
  sit anywhere, as in the PyTorch model: each row's real tokens are moved to the front (a stable partition) and the
  LSTMs run with per-row lengths (the ONNX LSTM op's `sequence_lens`), so padding never touches the state.
- `decode_step.onnx`: `(input_ids (batch, 1), h, c) -> (logits (batch, vocab), h, c)`, one token on the state; each
  layer is two matmuls and the gate math, as in the model's own decode step.

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
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers.utils import logging

from .modeling_lstmlm import _quantization_method

logger = logging.get_logger(__name__)

PREFILL_FILE = "prefill.onnx"
DECODE_STEP_FILE = "decode_step.onnx"
CONFIG_FILE = "onnx_config.json"
DEFAULT_OPSET = 17
FROM_CONFIG = "from-config"  # default of `greedy_generate`'s special token ids: take them from onnx_config.json


def _check_exportable(model) -> None:
    if not hasattr(model, "lm_head") or not hasattr(model, "model"):
        raise ValueError(f"`model` must be an LSTMLMForCausalLM, got {type(model).__name__}")
    if _quantization_method(model.config) is not None:
        raise ValueError("ONNX export takes a float model; this one is quantized (`config.quantization` is set)")


class OnnxDecodeStep(nn.Module):
    """One token on an explicit state: `(input_ids (B, 1), h (L, B, H), c (L, B, H)) -> (logits (B, V), h, c)`.

    Reads the wrapped model's parameters (no copies); the math is the model's decode step (gate order i, f, g, o).
    """

    def __init__(self, model):
        super().__init__()
        _check_exportable(model)
        self.lm = model

    def forward(self, input_ids: torch.LongTensor, h: torch.Tensor, c: torch.Tensor):
        backbone = self.lm.model
        x = F.embedding(input_ids[:, 0], backbone.embed_tokens.weight)  # (batch, embedding_size)
        new_h, new_c = [], []
        for layer_idx, layer in enumerate(backbone.layers):
            gates = F.linear(x, layer.weight_ih_l0, layer.bias_ih_l0) + F.linear(
                h[layer_idx], layer.weight_hh_l0, layer.bias_hh_l0
            )  # (batch, 4 * hidden)
            i, f, g, o = gates.chunk(4, dim=1)
            cell = torch.sigmoid(f) * c[layer_idx] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(cell)  # (batch, hidden)
            new_h.append(x)
            new_c.append(cell)
        top = backbone.proj(x) if backbone.proj is not None else x
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
        x = F.embedding(input_ids, backbone.embed_tokens.weight)  # (batch, seq, embedding_size)
        x = torch.zeros_like(x).scatter(1, dest[..., None].expand_as(x), x)
        run_lengths = lengths.clamp(min=1)
        hs, cs = [], []
        for layer in backbone.layers:
            packed = pack_padded_sequence(x, run_lengths, batch_first=True, enforce_sorted=False)
            out, (h, c) = layer(packed)
            x, _ = pad_packed_sequence(out, batch_first=True)  # (batch, max length, hidden), zeros past each length
            hs.append(h[0])
            cs.append(c[0])
        last = (run_lengths - 1)[:, None, None].expand(-1, 1, x.shape[-1])
        top = x.gather(1, last)[:, 0]  # (batch, hidden) at each row's last real token
        top = backbone.proj(top) if backbone.proj is not None else top
        has_tokens = (lengths > 0)[None, :, None]  # rows without a real token keep the zero state
        h = torch.where(has_tokens, torch.stack(hs), 0.0)
        c = torch.where(has_tokens, torch.stack(cs), 0.0)
        return self.lm.lm_head(top), h, c


def export_onnx(model, output_dir: str | Path, opset_version: int = DEFAULT_OPSET) -> dict[str, Path]:
    """Write `prefill.onnx`, `decode_step.onnx` and `onnx_config.json` (sizes and special token ids) to `output_dir`.

    Returns the paths by name (`prefill`, `decode_step`, `config`).
    """
    _check_exportable(model)
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
    paths = {
        "prefill": output_dir / PREFILL_FILE,
        "decode_step": output_dir / DECODE_STEP_FILE,
        "config": output_dir / CONFIG_FILE,
    }
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


class OnnxLSTMLM:
    """The exported graphs on onnxruntime: `prefill`, `step`, and a greedy loop equal to `generate(do_sample=False)`.

    Args:
        folder: a folder written by `export_onnx`.
        num_threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, folder: str | Path, num_threads: int = 0):
        import onnxruntime as ort

        folder = Path(folder)
        missing = [name for name in (PREFILL_FILE, DECODE_STEP_FILE, CONFIG_FILE) if not (folder / name).is_file()]
        if missing:
            raise OSError(f"{folder} is not an ONNX export of this model (missing {', '.join(missing)})")
        self.config = json.loads((folder / CONFIG_FILE).read_text())
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


__all__ = ["FROM_CONFIG", "compare_with_model", "OnnxDecodeStep", "OnnxLSTMLM", "OnnxPrefill", "export_onnx"]
