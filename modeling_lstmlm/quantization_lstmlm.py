"""Int8 layers for CPU inference: `Int8Linear` and `Int8LSTMLMLayer` (the `LSTMLMLayer` interface on int8 weights),
and `quantize_int8`, which converts a float model and records `config.quantization`.

This file travels with every saved model folder as remote code, next to `modeling_lstmlm.py` (which imports it
relatively where an int8 config needs it), because a saved int8 folder needs it to load; it imports only the layer
file, transformers and torch. The user-facing entry points are `modeling_lstmlm.quantization.quantize_model` and
`from_pretrained(folder, quantize="int8")`.

The weights are int8 with one float scale per output row; torch's dynamic-quantization kernels
(`quantized::linear_dynamic`, `quantized_lstm_cell_dynamic`: fbgemm / oneDNN on x86, qnnpack on ARM) quantize the
activations on the fly. The int8 layer's recurrence calls its two `Int8Linear`s (never reads their buffers), one time
step at a time, for prompts and decoding alike.
"""

import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from transformers.utils import logging

from .layer_lstmlm import LSTMLMLayer

logger = logging.get_logger(__name__)

QUANTIZATION_METHODS = ("int8",)


def _quantized_op(name: str):
    """The default overload of `torch.ops.quantized.<name>` (called directly: the op packet re-checks its arguments in
    Python on every call), or None where this torch build lacks it."""
    try:
        return getattr(torch.ops.quantized, name).default
    except (AttributeError, RuntimeError):
        return None


_LINEAR_DYNAMIC = _quantized_op("linear_dynamic")


def _quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output row: `weight ~= int8 * scale[:, None]`."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one float scale per output row) and activations quantized on the fly.

    The weights live in the buffers `weight_int8` and `weight_scale` (saved and loaded like any weight); the packed
    form that the kernel reads is built from them on first use and rebuilt whenever they change (new storage or an
    in-place write that bumps their version counter). Inference only: there is no gradient for the weights.

    Example:

    ```python
    >>> layer = Int8Linear.from_float(nn.Linear(512, 2048))
    >>> layer(torch.randn(3, 512)).shape
    torch.Size([3, 2048])
    ```
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, reduce_range: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # Quantize activations to 7 bits as torch's dynamic Linear does: fbgemm's int16 accumulation can saturate
        # with full 8-bit activations on CPUs without VNNI.
        self.reduce_range = reduce_range
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None
        self._packed_key = None

    @classmethod
    def from_float(cls, linear: nn.Linear, reduce_range: bool = True) -> "Int8Linear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, reduce_range=reduce_range)
        return layer._set_weights(linear.weight, linear.bias)

    def _set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "Int8Linear":
        q, scale = _quantize_rows(weight)
        self.weight_int8 = q.to(weight.device)
        self.weight_scale = scale.to(weight.device)
        if bias is not None:
            self.bias = bias.detach().float().clone()
        return self

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the int8 one stands for, `(out_features, in_features)`."""
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def _packed_weight(self):
        # Runs on every decoding step, so the staleness key is kept cheap: storage and version of each buffer, and
        # the quantized engine.
        weight, scale, bias = self.weight_int8, self.weight_scale, self.bias
        key = (
            weight.data_ptr(),
            weight._version,
            scale.data_ptr(),
            scale._version,
            None if bias is None else (bias.data_ptr(), bias._version),
            torch._C._get_qengine(),
        )
        if self._packed_key != key:
            self._packed = None
            if self.weight_int8.device.type == "cpu" and _LINEAR_DYNAMIC is not None:
                try:
                    with warnings.catch_warnings():
                        # torch marks its quantized-tensor constructors deprecated in favour of torchao, whose x86
                        # eager kernels are slower than this one on x86 (see quantization.py).
                        warnings.simplefilter("ignore")
                        scale = self.weight_scale.double()
                        qweight = torch.quantize_per_channel(
                            self.dequantized_weight(),
                            scale,
                            torch.zeros_like(scale, dtype=torch.long),
                            0,
                            torch.qint8,
                        )
                        bias = self.bias.float() if self.bias is not None else None
                        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
                except (RuntimeError, AttributeError, NotImplementedError) as error:
                    logger.warning_once(f"int8 kernels unavailable ({error}); using dequantized float weights")
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_weight()
        if packed is None:  # no int8 kernel for this device or build: same result from the dequantized weights
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)
        y = _LINEAR_DYNAMIC(x.float(), packed, self.reduce_range)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def check_quantization_config(config) -> dict:
    """`config.quantization` with its defaults filled in; a ValueError names a malformed entry."""
    entry = config.quantization
    method = entry.get("method") if isinstance(entry, dict) else None
    if method not in QUANTIZATION_METHODS:
        raise ValueError(
            f"`config.quantization` must be None or a dict with `method` in {QUANTIZATION_METHODS}, got {entry!r}"
        )
    return {"reduce_range": True, **entry}


class Int8LSTMLMLayer(LSTMLMLayer):
    """`LSTMLMLayer` with int8 weights: the same calls (`layer(x, state, mask)`, `layer.step(x, (h, c))`).

    The weights live in two `Int8Linear`s, `ih` and `hh` (input-to-hidden and hidden-to-hidden, biases included), and
    are only ever used by calling them, so accelerate's offload hooks (on the layer or on each `Int8Linear`) and
    forward hooks see every use. The recurrence is written once, in `_cell`: the gates are `ih(x) + hh(h)` (two int8
    matmuls, activations quantized on the fly, one scale per call), then the LSTM gate math in float32. `step` is one
    such time step; a sequence runs them position by position, so a prompt gives exactly what feeding it token by
    token gives. Padding (`mask`) leaves a row's state untouched and outputs zeros, as in
    `LSTMLMLayer`. Inference only.

    Example:

    ```python
    >>> layer = Int8LSTMLMLayer.from_float(LSTMLMLayer(24, 16))
    >>> h, c = layer.step(torch.randn(3, 24), (torch.zeros(3, 16), torch.zeros(3, 16)))
    ```
    """

    def __init__(self, input_size: int, hidden_size: int, reduce_range: bool = True):
        nn.Module.__init__(self)  # not LSTMLMLayer.__init__: no float parameters
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_dropout = 0.0
        self.ih = Int8Linear(input_size, 4 * hidden_size, reduce_range=reduce_range)
        self.hh = Int8Linear(hidden_size, 4 * hidden_size, reduce_range=reduce_range)

    @classmethod
    def from_float(cls, layer: LSTMLMLayer, reduce_range: bool = True) -> "Int8LSTMLMLayer":
        if type(layer) is not LSTMLMLayer:
            raise ValueError(f"Int8LSTMLMLayer replaces a float LSTMLMLayer, got {type(layer).__name__}")
        int8 = cls(layer.input_size, layer.hidden_size, reduce_range=reduce_range)
        int8.ih._set_weights(layer.weight_ih_l0, layer.bias_ih_l0)
        int8.hh._set_weights(layer.weight_hh_l0, layer.bias_hh_l0)
        return int8

    def _cell(self, gates_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the input's gate pre-activations `ih(x)` `(batch, 4 * hidden)` and float32 `(h, c)`."""
        i, f, g, o = (gates_x + self.hh(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: `x` `(batch, input_size)`, `state` `(h, c)` -> the new `(h, c)`, each `(batch, hidden)`."""
        return self._cell(self.ih(x.float()), state[0].float(), state[1].float())

    def forward(self, x, state=None, mask: torch.Tensor | None = None):
        if isinstance(x, PackedSequence):
            raise ValueError("Int8LSTMLMLayer takes a padded (batch, seq, input) tensor and a mask, not packed input")
        batch_size, seq_len = x.shape[:2]
        if state is None:
            zeros = x.new_zeros(batch_size, self.hidden_size, dtype=torch.float32)
            state = (zeros, zeros)
        dtype = state[0].dtype
        if seq_len == 1 and mask is None:
            h, c = self.step(x[:, 0], state)
            return h[:, None].to(x.dtype), (h.to(dtype), c.to(dtype))
        h, c = state[0].float(), state[1].float()
        x = x.float()
        outputs = []
        for t in range(seq_len):
            # Position by position, the input side too: the activations' int8 scale is taken per call, so this is
            # exactly what decoding the same tokens one at a time computes.
            h_new, c_new = self._cell(self.ih(x[:, t]), h, c)
            if mask is None:
                h, c = h_new, c_new
                outputs.append(h)
            else:  # a padded position keeps the row's state and outputs zeros
                keep = mask[:, t, None]
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                outputs.append(torch.where(keep, h_new, 0.0))
        return torch.stack(outputs, dim=1).to(x.dtype), (h.to(dtype), c.to(dtype))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, int8"


def quantize_int8(model: nn.Module, reduce_range: bool = True) -> nn.Module:
    """Quantize a float LSTMLM model in place (its LSTM layers and, for a causal LM, the output layer) and record it in
    `model.config.quantization`, so that `save_pretrained` writes a folder the Auto classes load as int8.

    The output layer gets its own int8 copy of the weights, so `tie_word_embeddings` becomes False (the float
    embedding stays as it was). Inference only: the result cannot be trained. Returns the model, in eval mode.
    `modeling_lstmlm.quantization.quantize_model` and `from_pretrained(..., quantize="int8")` call this.
    """
    if getattr(model.config, "quantization", None) is not None:
        raise ValueError(f"The model is already quantized ({model.config.quantization})")
    backbone = getattr(model, model.base_model_prefix, model)
    if not all(type(layer) is LSTMLMLayer for layer in getattr(backbone, "layers", [None])):
        raise ValueError(f"`model` must be an LSTMLM model with float LSTMLMLayer layers, got {type(model).__name__}")
    backbone.layers = nn.ModuleList(Int8LSTMLMLayer.from_float(layer, reduce_range) for layer in backbone.layers)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        model.lm_head = Int8Linear.from_float(head, reduce_range)
    model.config.tie_word_embeddings = False
    model.config.quantization = {"method": "int8", "reduce_range": reduce_range}
    return model.eval()


__all__ = ["QUANTIZATION_METHODS", "Int8LSTMLMLayer", "Int8Linear", "check_quantization_config", "quantize_int8"]
