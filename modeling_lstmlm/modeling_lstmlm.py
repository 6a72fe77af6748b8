"""The LSTM language model as a native transformers model.

Embedding -> a stack of one-layer `nn.LSTM`s (the fused oneDNN / cuDNN kernels) -> optional projection -> linear
head over the vocabulary. The per-layer (h, c) state is the generation cache: after the prompt, each decoding step
feeds only the newest token.

This file travels with every saved model folder as remote code: it imports only the configuration file (relatively),
transformers and torch.
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.utils import ModelOutput, logging

from .configuration_lstmlm import LSTMLMConfig

logger = logging.get_logger(__name__)


class LSTMLMCache(DynamicCache):
    """The recurrent state of an LSTM language model, as a transformers `Cache`.

    One recurrent-state slot per LSTM layer holds `(h, c)` stacked as a `(batch, 2, hidden_size)` tensor (batch on
    dim 0, so beam search reorders it with `reorder_cache`). `seen_tokens` counts the positions the state has
    consumed (padding included), so that a cache returned by `generate` can be passed back with the full sequence
    and only the unseen tokens are fed.

    Example:

    ```python
    >>> cache = LSTMLMCache(config=model.config)
    >>> out = model(input_ids, cache=cache, use_cache=True)
    >>> out.cache.seen_tokens == input_ids.shape[1]
    True
    ```
    """

    def __init__(self, config: LSTMLMConfig, **kwargs):
        super().__init__(config=config, **kwargs)
        self.seen_tokens = 0

    def get_state(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The `(h, c)` of layer `layer_idx`, each `(batch, hidden_size)`, or None before the first token."""
        state = self.get_recurrent_state(layer_idx)
        if state is None:
            return None
        return state[:, 0], state[:, 1]

    def set_state(self, layer_idx: int, h: torch.Tensor, c: torch.Tensor) -> None:
        self.update_recurrent_state(torch.stack((h, c), dim=1), layer_idx)
        # `update_recurrent_state` alone does not mark the slot as holding a state (get_recurrent_state would keep
        # returning None and every step would silently restart from zero), so mark it here.
        self.layers[layer_idx].has_previous_state[0] = True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens


@dataclass
class LSTMLMModelOutput(ModelOutput):
    """
    Output of the LSTM backbone.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, embedding_size)`):
            The top of the stack (projected to `embedding_size` when it differs from `hidden_size`), after the
            output dropout.
        cache (`LSTMLMCache`, *optional*, returned when `use_cache=True`):
            The per-layer `(h, c)` after the last position; pass it back with the next tokens to continue.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and the output of every LSTM layer (the last entry is `last_hidden_state`).
        regularization_loss (`torch.FloatTensor`, *optional*):
            The AR + TAR penalty of this forward pass (training only, when the config enables it).
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    regularization_loss: torch.FloatTensor | None = None


@dataclass
class LSTMLMCausalLMOutput(ModelOutput):
    """
    Output of the LSTM language model.

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
            Next-token cross-entropy (labels shifted inside the model, -100 ignored); in training it also includes
            the AR/TAR penalty when the config enables it.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Scores over the vocabulary before the softmax.
        cache (`LSTMLMCache`, *optional*, returned when `use_cache=True`):
            The per-layer `(h, c)` after the last position.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and the output of every LSTM layer.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def _dropout(x: torch.Tensor, p: float, training: bool, variational: bool) -> torch.Tensor:
    """Standard dropout, or locked dropout with one mask per sequence shared over time (`x` is (batch, seq, dim))."""
    if not training or p == 0:
        return x
    if not variational:
        return F.dropout(x, p, training=True)
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)  # (batch, 1, dim)
    return x * mask


_CACHE_ALIASES = ("past_key_values", "cache_params")


def _cache_argument(cache, kwargs: dict, func_name: str):
    """`cache`, or the state passed under a deprecated name (`past_key_values`, `cache_params`), popped from `kwargs`.

    What transformers' `deprecate_kwarg(..., new_name="cache")` does, inline: the wrapper costs a few microseconds on
    every call, and the forward and `prepare_inputs_for_generation` run once per generated token.
    """
    for old_name in _CACHE_ALIASES:
        if old_name in kwargs:
            value = kwargs.pop(old_name)
            if cache is None:
                warnings.warn(
                    f"`{old_name}` is deprecated for `{func_name}`: use `cache` instead", FutureWarning, stacklevel=3
                )
                cache = value
            else:
                message = f"Both `{old_name}` and `cache` are set for `{func_name}`; using `cache`"
                warnings.warn(message, FutureWarning, stacklevel=3)
    return cache


def _check_cache_batch(state, batch_size: int) -> None:
    if state is not None and state[0].shape[0] != batch_size:
        raise ValueError(
            f"The cache holds the state of {state[0].shape[0]} sequences but the input has {batch_size} rows "
            "(a cache from beam search or `num_return_sequences` holds one state per returned sequence)"
        )


def _lstm_cell(layer: nn.Module, x: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of a one-layer LSTM, computed directly from the layer's own parameters (no copies to go stale).

    `x` is `(batch, input_size)`; `state` is the layer's `(h, c)`, each `(batch, hidden)`, or None for the zero state.
    Returns the new `(h, c)` as new tensors. For eval-mode, no-grad decoding only: the fused `nn.LSTM` kernel repacks
    its weights on every call, which costs more than the step itself for one token; ATen's one-step cell (two matmuls
    and the gate math in one call) does not. Same gate order as `nn.LSTM` (input, forget, cell, output).
    """
    if state is None:
        zeros = x.new_zeros(x.shape[0], layer.hidden_size)
        state = (zeros, zeros)
    if isinstance(layer, nn.LSTM):
        return torch.lstm_cell(x, state, layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
    return layer.cell(x, state)  # an `Int8LSTM` (below): int8 matmuls


# Int8 inference on CPU. `quantize_int8` (below; `quantization.quantize_model`, `from_pretrained(..., quantize="int8")`)
# converts a float model and records `config.quantization`; all of it lives here because a saved int8 folder needs it to
# load (this file travels as remote code). The weights are int8 with one float scale per output row; torch's
# dynamic-quantization kernels (`quantized::linear_dynamic`, `quantized_lstm_cell_dynamic`: fbgemm / oneDNN on x86,
# qnnpack on ARM) quantize the activations on the fly.

_QUANTIZATION_METHODS = ("int8",)


def _quantized_op(name: str):
    """The default overload of `torch.ops.quantized.<name>` (called directly: the op packet re-checks its arguments in
    Python on every call), or None where this torch build lacks it."""
    try:
        return getattr(torch.ops.quantized, name).default
    except (AttributeError, RuntimeError):
        return None


_LINEAR_DYNAMIC = _quantized_op("linear_dynamic")
_QUANTIZED_LSTM_CELL = _quantized_op("quantized_lstm_cell_dynamic")


def _quantization_method(config) -> str | None:
    """The quantization method recorded in `config` (`None` for a float model); raises on an unknown entry."""
    entry = getattr(config, "quantization", None)
    if entry is None:
        return None
    method = entry.get("method") if isinstance(entry, dict) else None
    if method not in _QUANTIZATION_METHODS:
        raise ValueError(
            f"`config.quantization` must be None or a dict with `method` in {_QUANTIZATION_METHODS}, got {entry!r}"
        )
    return method


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


class Int8LSTM(nn.Module):
    """A one-layer batch-first LSTM with int8 weights, in place of `nn.LSTM(input_size, hidden_size, batch_first=True)`.

    Single-token decoding calls `cell` (two int8 matmuls and the gate math). Multi-token forwards (prompts, scoring,
    padded batches as `PackedSequence`) run the fused LSTM kernel on the dequantized weights, so they give what the
    decode step gives up to the activations' quantization.
    """

    def __init__(self, input_size: int, hidden_size: int, reduce_range: bool = True):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.ih = Int8Linear(input_size, 4 * hidden_size, reduce_range=reduce_range)
        self.hh = Int8Linear(hidden_size, 4 * hidden_size, reduce_range=reduce_range)
        # A weightless nn.LSTM that `functional_call` runs with the dequantized weights (kept out of the state dict).
        self.__dict__["_template"] = nn.LSTM(input_size, hidden_size, batch_first=True, device="meta")

    @classmethod
    def from_float(cls, lstm: nn.LSTM, reduce_range: bool = True) -> "Int8LSTM":
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first or lstm.proj_size or not lstm.bias:
            raise ValueError(f"Int8LSTM replaces a one-layer, unidirectional, batch-first LSTM with biases, got {lstm}")
        layer = cls(lstm.input_size, lstm.hidden_size, reduce_range=reduce_range)
        layer.ih._set_weights(lstm.weight_ih_l0, lstm.bias_ih_l0)
        layer.hh._set_weights(lstm.weight_hh_l0, lstm.bias_hh_l0)
        return layer

    def cell(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: `x` `(batch, input_size)`, `state` `(h, c)` -> the new `(h, c)`, each `(batch, hidden)`."""
        packed_ih, packed_hh = self.ih._packed_weight(), self.hh._packed_weight()
        if packed_ih is None or packed_hh is None:  # no int8 kernel here: the same step on the dequantized weights
            dtype = x.dtype
            return torch.lstm_cell(
                x,
                state,
                self.ih.dequantized_weight(dtype),
                self.hh.dequantized_weight(dtype),
                self.ih.bias.to(dtype),
                self.hh.bias.to(dtype),
            )
        x, h, c = x.float(), state[0].float(), state[1].float()
        if self.ih.reduce_range and self.hh.reduce_range and _QUANTIZED_LSTM_CELL is not None:
            # ATen's dynamic-quantization LSTM cell: both int8 matmuls (the biases are inside the packed weights; its
            # bias arguments are not added again) and the gate math in one call. It quantizes activations to 7 bits.
            h, c = _QUANTIZED_LSTM_CELL(x, [h, c], packed_ih, packed_hh, self.ih.bias, self.hh.bias)
        else:  # the same step in two kernel calls (8-bit activations when reduce_range is off)
            gates = _LINEAR_DYNAMIC(x, packed_ih, self.ih.reduce_range)
            gates += _LINEAR_DYNAMIC(h, packed_hh, self.hh.reduce_range)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return (h, c) if state[0].dtype == torch.float32 else (h.to(state[0].dtype), c.to(state[0].dtype))

    def forward(self, x, hx=None):
        dtype = x.data.dtype  # x may be a PackedSequence
        params = {
            "weight_ih_l0": self.ih.dequantized_weight(dtype),
            "weight_hh_l0": self.hh.dequantized_weight(dtype),
            "bias_ih_l0": self.ih.bias.to(dtype),
            "bias_hh_l0": self.hh.bias.to(dtype),
        }
        return functional_call(self._template, params, (x, hx))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, batch_first=True, int8"


def quantize_int8(model: nn.Module, reduce_range: bool = True) -> nn.Module:
    """Quantize a float LSTMLM model in place (its LSTM layers and, for a causal LM, the output layer) and record it in
    `model.config.quantization`, so that `save_pretrained` writes a folder the Auto classes load as int8.

    The output layer gets its own int8 copy of the weights, so `tie_word_embeddings` becomes False (the float
    embedding stays as it was). Inference only: the result cannot be trained. Returns the model, in eval mode.
    `modeling_lstmlm.quantization.quantize_model` and `from_pretrained(..., quantize="int8")` call this.
    """
    if _quantization_method(model.config) is not None:
        raise ValueError(f"The model is already quantized ({model.config.quantization})")
    backbone = getattr(model, model.base_model_prefix, model)
    if not all(isinstance(layer, nn.LSTM) for layer in getattr(backbone, "layers", [None])):
        raise ValueError(f"`model` must be an LSTMLM model with nn.LSTM layers, got {type(model).__name__}")
    backbone.layers = nn.ModuleList(Int8LSTM.from_float(layer, reduce_range) for layer in backbone.layers)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        model.lm_head = Int8Linear.from_float(head, reduce_range)
    model.config.tie_word_embeddings = False
    model.config.quantization = {"method": "int8", "reduce_range": reduce_range}
    return model.eval()


class LSTMLMPreTrainedModel(PreTrainedModel):
    config: LSTMLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    _no_split_modules = ["LSTM"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        r = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -r, r)
        elif isinstance(module, nn.LSTM):
            bound = module.hidden_size**-0.5
            for param in module.parameters():
                init.uniform_(param, -bound, bound)
        elif isinstance(module, nn.Linear):
            if module.out_features == self.config.vocab_size or module is getattr(self, "score", None):
                init.uniform_(module.weight, -r, r)
            else:
                bound = module.in_features**-0.5
                init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, quantize: str | None = None, **kwargs):
        r"""
        Loads like any transformers model, plus:

        quantize (`str`, *optional*):
            `"int8"`: quantize the loaded float model for CPU inference (int8 LSTM and output weights, one scale per
            row; see `modeling_lstmlm/quantization.py`). A folder saved from it loads as int8 without this argument.
            A folder that is already int8 loads as it is.
        """
        if quantize is not None and quantize not in _QUANTIZATION_METHODS:
            raise ValueError(f"`quantize` must be None or one of {_QUANTIZATION_METHODS}, got {quantize!r}")
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as err:
            raise OSError(
                f"Could not read the weights of {str(pretrained_model_name_or_path)!r}: the safetensors file is "
                f"corrupt or truncated ({err})"
            ) from err
        if quantize is not None and _quantization_method(model.config) is None:
            model = quantize_int8(model)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` maps only the saved object's class in `auto_map`; map every head of this file so
        # that the saved folder loads with each Auto class where the package is not installed.
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for cls in (LSTMLMModel, LSTMLMForCausalLM, LSTMLMForSequenceClassification):
                auto_map[cls._auto_class] = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class LSTMLMModel(LSTMLMPreTrainedModel):
    """The LSTM backbone: token embedding -> LSTM stack -> (projection to `embedding_size`) -> output dropout.

    Example:

    ```python
    >>> import torch
    >>> from modeling_lstmlm import LSTMLMConfig, LSTMLMModel

    >>> model = LSTMLMModel(LSTMLMConfig(vocab_size=100, hidden_size=16))
    >>> out = model(torch.tensor([[1, 2, 3]]), use_cache=True)
    >>> out.last_hidden_state.shape
    torch.Size([1, 3, 16])
    ```
    """

    # One-token forwards in eval without grad (generate's decoding steps) use `_decode_step`; set to False on an
    # instance to run them through `nn.LSTM` instead (benchmarks compare the two).
    direct_decode: bool = True

    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.layers = nn.ModuleList(
            nn.LSTM(config.embedding_size if i == 0 else config.hidden_size, config.hidden_size, batch_first=True)
            for i in range(config.num_hidden_layers)
        )
        if _quantization_method(config) is not None:  # an int8 folder (see quantization.py): int8 weights
            reduce_range = config.quantization.get("reduce_range", True)
            self.layers = nn.ModuleList(Int8LSTM(x.input_size, x.hidden_size, reduce_range) for x in self.layers)
        # Projects the top of the stack to the embedding size, so the output layer can be tied to the embedding.
        self.proj = (
            nn.Linear(config.hidden_size, config.embedding_size, bias=False)
            if config.embedding_size != config.hidden_size
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.embed_tokens = new_embeddings

    def _embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape (batch, sequence), got {tuple(input_ids.shape)}")
        weight = self.embed_tokens.weight
        p = self.config.embedding_row_dropout
        if self.training and p > 0:
            # Drop whole vocabulary rows: every occurrence of a dropped token is zeroed in this batch.
            weight = weight * weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        if weight.device.type == "cpu" and weight.shape[0] == self.config.vocab_size:
            # On CPU the lookup itself refuses an id outside the table (IndexError), so the check costs nothing on
            # the good path (it runs every decoding step); elsewhere an out-of-range id is a device-side assert.
            try:
                return F.embedding(input_ids, weight, self.embed_tokens.padding_idx)
            except IndexError:
                self._check_ids(input_ids)
                raise
        self._check_ids(input_ids)
        return F.embedding(input_ids, weight, self.embed_tokens.padding_idx)

    def _check_ids(self, input_ids: torch.LongTensor) -> None:
        if input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"`input_ids` must be token ids in [0, vocab_size={self.config.vocab_size}), got values in "
                    f"[{low}, {high}]"
                )

    def _run_layer(self, layer: nn.LSTM, x, state):
        """One LSTM layer over `x` (tensor or PackedSequence), with DropConnect on the hidden weights in training."""
        if self.training and self.config.weight_dropout > 0:
            dropped = F.dropout(layer.weight_hh_l0, self.config.weight_dropout, training=True)
            return functional_call(layer, {"weight_hh_l0": dropped}, (x, state))
        return layer(x, state)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | LSTMLMModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids in `[0, vocab_size)`.
        attention_mask (`torch.LongTensor` of shape `(batch_size, past_length + sequence_length)`, *optional*):
            1 for real tokens, 0 for padding; its last `sequence_length` columns are used. Padded positions never
            touch the state, wherever they are (left, right or inside), so each row of a padded batch gives exactly
            what it gives alone. The output at a padded position is zero.
        cache (`LSTMLMCache`, *optional*):
            The state to start from (zero state when omitted).
        use_cache (`bool`, *optional*):
            Return the state after the last position as `cache` (default: `config.use_cache` in eval mode).
        """
        if kwargs:
            cache = _cache_argument(cache, kwargs, "LSTMLMModel.forward")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids)  # (batch, seq, embedding_size)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.embedding_size:
            raise ValueError(
                f"`inputs_embeds` must have shape (batch, sequence, {self.config.embedding_size}), "
                f"got {tuple(inputs_embeds.shape)}"
            )
        batch_size, seq_len = inputs_embeds.shape[:2]
        if cache is not None and not isinstance(cache, LSTMLMCache):
            raise ValueError(f"`cache` must be an LSTMLMCache (as returned by this model), got {type(cache).__name__}")
        if cache is not None:
            _check_cache_batch(cache.get_state(0), batch_size)
        if use_cache and cache is None:
            cache = LSTMLMCache(config=self.config)

        mask = self._prepare_mask(attention_mask, batch_size, seq_len)  # (batch, seq) bool, or None if no padding
        if self.direct_decode and seq_len == 1 and mask is None and not self.training and not torch.is_grad_enabled():
            # One token in inference (every decoding step of `generate`): the direct step, not the fused kernel.
            output, all_hidden_states = self._decode_step(inputs_embeds, cache, output_hidden_states)
            if not return_dict:
                return tuple(v for v in (output, cache if use_cache else None, all_hidden_states) if v is not None)
            return LSTMLMModelOutput(
                last_hidden_state=output, cache=cache if use_cache else None, hidden_states=all_hidden_states
            )
        variational = self.config.variational_dropout
        hidden = _dropout(inputs_embeds, self.config.embedding_dropout, self.training, variational)
        all_hidden_states = (hidden,) if output_hidden_states else None
        for layer_idx, layer in enumerate(self.layers):
            state = cache.get_state(layer_idx) if cache is not None else None
            hidden, (h, c) = self._run_stack_layer(layer, hidden, state, mask)  # (batch, seq, hidden)
            if cache is not None:
                cache.set_state(layer_idx, h, c)
            if layer_idx < len(self.layers) - 1:
                hidden = _dropout(hidden, self.config.hidden_dropout, self.training, variational)
            if output_hidden_states and layer_idx < len(self.layers) - 1:
                all_hidden_states += (hidden,)
        top = self.proj(hidden) if self.proj is not None else hidden  # (batch, seq, embedding_size)
        output = _dropout(top, self.config.output_dropout, self.training, variational)
        if output_hidden_states:
            all_hidden_states += (output,)
        if cache is not None:
            cache.seen_tokens += seq_len

        regularization_loss = None
        alpha, beta = self.config.activation_regularization, self.config.temporal_activation_regularization
        if self.training and (alpha > 0 or beta > 0):
            keep = mask[..., None] if mask is not None else None  # padded positions carry no penalty
            regularization_loss = output.new_zeros(())
            if alpha > 0:
                sq = output.pow(2) if keep is None else output.pow(2) * keep
                regularization_loss = regularization_loss + alpha * sq.mean()
            if beta > 0 and seq_len > 1:
                diff = (top[:, 1:] - top[:, :-1]).pow(2)
                if keep is not None:
                    diff = diff * (keep[:, 1:] & keep[:, :-1])
                regularization_loss = regularization_loss + beta * diff.mean()

        if not return_dict:
            values = (output, cache if use_cache else None, all_hidden_states, regularization_loss)
            return tuple(v for v in values if v is not None)
        return LSTMLMModelOutput(
            last_hidden_state=output,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            regularization_loss=regularization_loss,
        )

    def _decode_step(self, inputs_embeds: torch.Tensor, cache: LSTMLMCache | None, output_hidden_states: bool):
        """One position through the stack with `_lstm_cell` (eval, no grad, no padding); updates `cache` in place.

        Matches the fused `nn.LSTM` path (logits within 1e-5, same greedy ids); training and multi-token prefill keep
        the fused kernels. Returns the output `(batch, 1, embedding_size)` and the hidden states when asked.
        """
        hidden = inputs_embeds[:, 0]  # (batch, embedding_size)
        all_hidden_states = (inputs_embeds,) if output_hidden_states else None
        last = len(self.layers) - 1
        for layer_idx, layer in enumerate(self.layers):
            state = cache.get_state(layer_idx) if cache is not None else None
            if layer_idx == 0:
                _check_cache_batch(state, hidden.shape[0])
            hidden, c = _lstm_cell(layer, hidden, state)  # (batch, hidden)
            if state is not None:  # `get_state` gives views of the cache slot
                state[0].copy_(hidden)
                state[1].copy_(c)
            elif cache is not None:
                cache.set_state(layer_idx, hidden, c)
            if output_hidden_states and layer_idx < last:
                all_hidden_states += (hidden[:, None],)
        top = self.proj(hidden) if self.proj is not None else hidden
        output = top[:, None]  # (batch, 1, embedding_size)
        if output_hidden_states:
            all_hidden_states += (output,)
        if cache is not None:
            cache.seen_tokens += 1
        return output, all_hidden_states

    @staticmethod
    def _prepare_mask(attention_mask, batch_size: int, seq_len: int) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or attention_mask.shape[1] < seq_len:
            raise ValueError(
                f"`attention_mask` must have shape (batch={batch_size}, >= {seq_len}) with its last columns for "
                f"the current tokens, got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask[:, attention_mask.shape[1] - seq_len :].bool()
        return None if bool(mask.all()) else mask

    def _run_stack_layer(self, layer: nn.LSTM, x: torch.Tensor, state, mask: torch.Tensor | None):
        """Run one layer; with padding, only each row's real tokens (in order) go through the recurrence."""
        # Copies, not views: `cache.set_state` overwrites the cache slot in place after this layer, and the LSTM keeps
        # hx for its backward pass (a batch-1 view would be "contiguous" already, then modified: autograd error).
        hx = None
        if state is not None:
            hx = tuple(s.unsqueeze(0).clone(memory_format=torch.contiguous_format) for s in state)  # (1, batch, hidden)
        if mask is None:
            out, (h, c) = self._run_layer(layer, x, hx)
            return out, (h[0], c[0])
        batch_size, seq_len, dim = x.shape
        lengths = mask.sum(dim=1)  # (batch,)
        # Move each row's real tokens to the front, keeping their order, and run them as a packed sequence.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (batch, seq)
        gathered = x.gather(1, order[..., None].expand(-1, -1, dim))
        packed = pack_padded_sequence(gathered, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out_packed, (h, c) = self._run_layer(layer, packed, hx)
        out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=seq_len)  # zeros past each length
        out = out.new_zeros(out.shape).scatter(1, order[..., None].expand(-1, -1, out.shape[-1]), out)
        h, c = h[0], c[0]
        empty = (lengths == 0)[:, None]  # rows with no real token keep their state
        if bool(empty.any()):
            h0 = hx[0][0] if hx is not None else torch.zeros_like(h)
            c0 = hx[1][0] if hx is not None else torch.zeros_like(c)
            h, c = torch.where(empty, h0, h), torch.where(empty, c0, c)
        return out * mask[..., None], (h, c)


class LSTMLMForCausalLM(LSTMLMPreTrainedModel, GenerationMixin):
    """The LSTM language model with its output layer (tied to the embedding by default).

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> import modeling_lstmlm  # registers the model with the Auto classes

    >>> tokenizer = AutoTokenizer.from_pretrained("runs/demo")
    >>> model = AutoModelForCausalLM.from_pretrained("runs/demo")
    >>> inputs = tokenizer("ROMEO:", return_tensors="pt")
    >>> out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    >>> print(tokenizer.decode(out[0]))
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.model = LSTMLMModel(config)
        self.lm_head = nn.Linear(config.embedding_size, config.vocab_size, bias=True)
        if _quantization_method(config) is not None:  # an int8 folder (see quantization.py): int8 weights
            reduce_range = config.quantization.get("reduce_range", True)
            self.lm_head = Int8Linear(config.embedding_size, config.vocab_size, reduce_range=reduce_range)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.model.embed_tokens = new_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> tuple | LSTMLMCausalLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets; they are shifted inside the model, so `labels = input_ids` works. Positions set to
            -100 are ignored.
        logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
            Compute logits only for the last `logits_to_keep` positions (0 keeps all); `generate` uses 1.
        """
        if kwargs:
            cache = _cache_argument(cache, kwargs, "LSTMLMForCausalLM.forward")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (
            input_ids is not None
            and input_ids.dim() == 2
            and input_ids.shape[1] == 1
            and isinstance(cache, LSTMLMCache)
            and labels is None
            and attention_mask is None
            and inputs_embeds is None
            and isinstance(logits_to_keep, int)
            and not (output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
            and self.model.direct_decode
            and not self.training
            and not torch.is_grad_enabled()
        ):
            # A decoding step as `generate` sends it (one token and the state): the backbone's direct step without
            # the generic forward's bookkeeping (a module call, a second ModelOutput, the mask and padding checks).
            # Same computation as the path below; `tests/test_inference.py` compares the two.
            output, _ = self.model._decode_step(self.model._embed(input_ids), cache, False)
            logits = self.lm_head(output)  # (batch, 1, vocab)
            use_cache = use_cache if use_cache is not None else self.config.use_cache
            if not return_dict:
                return (logits, cache) if use_cache else (logits,)
            return LSTMLMCausalLMOutput(logits=logits, cache=cache if use_cache else None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden)  # (batch, kept, vocab)

        loss = None
        if labels is not None:
            if labels.shape != (logits.shape[0], logits.shape[1]):
                raise ValueError(
                    f"`labels` must have shape {tuple(logits.shape[:2])} (one per input position), "
                    f"got {tuple(labels.shape)}"
                )
            valid = labels != -100
            if bool(((labels < 0) | (labels >= self.config.vocab_size))[valid].any()):
                raise ValueError(f"`labels` must be -100 or token ids in [0, vocab_size={self.config.vocab_size})")
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if outputs.regularization_loss is not None:
                penalty = outputs.regularization_loss
                num_items_in_batch = kwargs.get("num_items_in_batch")
                if num_items_in_batch is not None:
                    # Under gradient accumulation the Trainer sums the micro-batches' losses (the loss above is
                    # already divided by the items of all of them): weigh the penalty by this micro-batch's share of
                    # the items, so that it counts once per optimizer step, as the cross-entropy does.
                    penalty = penalty * (labels[:, 1:] != -100).sum() / num_items_in_batch
                loss = loss + penalty

        if not return_dict:
            output = tuple(v for v in (logits, outputs.cache, outputs.hidden_states) if v is not None)
            return ((loss,) + output) if loss is not None else output
        return LSTMLMCausalLMOutput(loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states)

    def _prepare_generation_config(self, generation_config, **kwargs):
        """Refuses what cannot work on a recurrent state, and keeps the state on unless this call turns it off."""
        call_use_cache = kwargs.get("use_cache", getattr(generation_config, "use_cache", None))
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        if generation_config.use_cache is False and call_use_cache is None:
            # `config.use_cache=False` is a training setting (the Trainer writes it and `save_pretrained` keeps it);
            # the state costs O(1) per token, so generation keeps it unless the call itself passes `use_cache=False`.
            logger.info("Generating with the recurrent state although the model's config says `use_cache=False`")
            generation_config.use_cache = True
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                "LSTMLM keeps a fixed-size recurrent state as its cache; "
                f"`cache_implementation={generation_config.cache_implementation!r}` is not supported"
            )
        if generation_config.prefill_chunk_size is not None:
            raise ValueError(
                "`prefill_chunk_size` is not supported: LSTMLM reads the prompt in one pass, and its state does not "
                "grow with the prompt"
            )
        if generation_config.output_attentions:
            raise ValueError("LSTMLM has no attention, so `output_attentions=True` is not supported")
        return generation_config, model_kwargs

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ) -> None:
        """Generation keeps its state in an `LSTMLMCache` (constant size, whatever the length)."""
        user_cache = model_kwargs.get("cache")
        if user_cache is not None:
            if not isinstance(user_cache, LSTMLMCache):
                raise ValueError(
                    f"`cache` must be an LSTMLMCache (for example the `cache` returned by this model or by "
                    f"`generate(..., return_dict_in_generate=True)`), got {type(user_cache).__name__}"
                )
            user_cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        model_kwargs["cache"] = LSTMLMCache(config=self.config)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        cache = _cache_argument(cache, kwargs, "prepare_inputs_for_generation")
        if is_first_iteration and isinstance(cache, LSTMLMCache) and cache.seen_tokens > 0:
            # Resuming from a returned state: feed only the tokens it has not consumed yet.
            if inputs_embeds is not None:
                raise ValueError("Resuming from a cache takes `input_ids` (the full sequence), not `inputs_embeds`")
            if input_ids.shape[1] <= cache.seen_tokens:
                raise ValueError(
                    f"The cache has consumed {cache.seen_tokens} tokens, so `input_ids` (the full sequence so far) "
                    f"must be longer than that, got length {input_ids.shape[1]}"
                )
            next_sequence_length = input_ids.shape[1] - cache.seen_tokens
        elif not is_first_iteration and next_sequence_length == 1 and isinstance(cache, LSTMLMCache):
            # A decoding step: the newest token (never padding) and the state; the other kwargs (use_cache,
            # logits_to_keep, output_*) go through as the generic method would. Built here because the generic method
            # inspects `forward`'s signature and walks the parameters for the device on every step (~0.1 ms a token).
            model_inputs = {k: v for k, v in kwargs.items() if k != "labels"}
            model_inputs["input_ids"] = input_ids[:, -1:].to(self.model.embed_tokens.weight.device)
            model_inputs["cache"] = cache
            return model_inputs
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if cache is not None and not is_first_iteration and model_inputs["input_ids"].shape[1] == 1:
            # Decoding steps feed only generated tokens, which are never padding.
            model_inputs.pop("attention_mask", None)
        return model_inputs


class LSTMLMForSequenceClassification(LSTMLMPreTrainedModel):
    """The LSTM backbone with a classification (or regression) head on the hidden state of each row's last real
    token, found from the attention mask (right or left padding), or from `pad_token_id` when no mask is given. With
    `config.classifier_pooling="concat"` the head reads that state concatenated with the max and the mean of the
    hidden states over the row's real tokens (ULMFiT's concat pooling).

    Example:

    ```python
    >>> from transformers import AutoModelForSequenceClassification
    >>> import modeling_lstmlm

    >>> model = AutoModelForSequenceClassification.from_pretrained("runs/demo", num_labels=2)  # new head only
    ```
    """

    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LSTMLMModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.output_dropout
        self.dropout = nn.Dropout(dropout)
        width = config.embedding_size * (3 if config.classifier_pooling == "concat" else 1)
        self.score = nn.Linear(width, config.num_labels, bias=True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.model.embed_tokens = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`, floats for regression, or `(batch_size, num_labels)` multi-hot floats
            for multi-label classification (see `config.problem_type`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if attention_mask is None and input_ids is not None and self.config.pad_token_id is not None:
            # No mask given: pad tokens are padding, so they neither enter the recurrence (left padding would
            # otherwise change the state) nor get pooled.
            attention_mask = (input_ids != self.config.pad_token_id).long()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state  # (batch, seq, embedding_size)
        batch_size, seq_len = hidden.shape[:2]
        if attention_mask is not None:
            real = attention_mask[:, -seq_len:].bool()
        else:
            real = torch.ones(batch_size, seq_len, dtype=torch.bool, device=hidden.device)
        positions = torch.arange(seq_len, device=hidden.device)
        last = torch.where(real, positions, -1).amax(dim=1).clamp(min=0)  # (batch,) last real token
        pooled = hidden[torch.arange(batch_size, device=hidden.device), last]  # (batch, embedding_size)
        if self.config.classifier_pooling == "concat":
            mask = real.unsqueeze(-1)  # (batch, seq, 1)
            count = mask.sum(dim=1).clamp(min=1)  # (batch, 1)
            mean = hidden.masked_fill(~mask, 0.0).sum(dim=1) / count
            maximum = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).amax(dim=1)
            maximum = torch.where(mask.any(dim=1), maximum, torch.zeros_like(maximum))  # a row with no real token
            pooled = torch.cat([pooled, maximum, mean], dim=-1)  # (batch, 3 * embedding_size)
        logits = self.score(self.dropout(pooled))  # (batch, num_labels)

        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# Every `save_pretrained` copies this file and the configuration file next to the weights and writes `auto_map`, so a
# saved folder loads with `trust_remote_code=True` where this package is not installed.
LSTMLMModel.register_for_auto_class("AutoModel")
LSTMLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LSTMLMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "LSTMLMCache",
    "LSTMLMPreTrainedModel",
    "LSTMLMModel",
    "LSTMLMForCausalLM",
    "LSTMLMForSequenceClassification",
]
