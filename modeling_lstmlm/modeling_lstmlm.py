"""The LSTM language model as a native transformers model.

Embedding -> a stack of `LSTMLMLayer`s (each owns its recurrence: the fused oneDNN / cuDNN kernel over sequences, a
one-step cell for single tokens) -> optional projection -> linear head over the vocabulary. The per-layer (h, c) state
is the generation cache: after the prompt, each decoding step feeds only the newest token. Every weight is used by
calling its module, so forward hooks, accelerate's device and offload hooks and PEFT adapters see every use.

This file travels with every saved model folder as remote code: it imports only the files beside it (configuration,
generation, kernels, int8; relatively), transformers and torch.
"""

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.utils import logging

from .configuration_lstmlm import LSTMLMConfig
from .generation_lstmlm import LSTMLMCache, LSTMLMGenerationMixin, _cache_argument, _check_cache, _Output, _output_class
from .kernels_lstmlm import DecodingLinear
from .layer_lstmlm import LSTMLMLayer

logger = logging.get_logger(__name__)


@_output_class
class LSTMLMModelOutput(_Output):
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


@_output_class
class LSTMLMCausalLMOutput(_Output):
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


def _checks_on_host(tensor: torch.Tensor) -> bool:
    """Whether input checks may read values on the host: on CPU that is free; on an accelerator it would stall the
    device (a host synchronisation), so checks there are device-side asserts (`torch._assert_async`) instead."""
    return tensor.device.type == "cpu"


def _quantization(config) -> dict | None:
    """`config.quantization` (None for a float model), checked by the int8 file that implements it."""
    if getattr(config, "quantization", None) is None:
        return None
    from .quantization_lstmlm import check_quantization_config

    return check_quantization_config(config)


class LSTMLMPreTrainedModel(PreTrainedModel):
    config: LSTMLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    _no_split_modules = ["LSTMLMLayer", "Int8LSTMLMLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        r = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -r, r)
        elif isinstance(module, LSTMLMLayer):
            bound = module.hidden_size**-0.5
            for param in module.parameters(recurse=False):
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
        Loads like any transformers model (`device_map`, `offload_folder`, `max_memory` included), plus:

        quantize (`str`, *optional*):
            `"int8"`: quantize the loaded float model for CPU inference (int8 LSTM and output weights, one scale per
            row; see `modeling_lstmlm/quantization_lstmlm.py`). A folder saved from it loads as int8 without this
            argument. A folder that is already int8 loads as it is.
        """
        if quantize is not None:
            from .quantization_lstmlm import QUANTIZATION_METHODS, quantize_int8

            if quantize not in QUANTIZATION_METHODS:
                raise ValueError(f"`quantize` must be None or one of {QUANTIZATION_METHODS}, got {quantize!r}")
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as err:
            raise OSError(
                f"Could not read the weights of {str(pretrained_model_name_or_path)!r}: the safetensors file is "
                f"corrupt or truncated ({err})"
            ) from err
        if quantize is not None and _quantization(model.config) is None:
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

    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        sizes = [(config.embedding_size if i == 0 else config.hidden_size) for i in range(config.num_hidden_layers)]
        quantization = _quantization(config)
        if quantization is None:
            layers = (LSTMLMLayer(size, config.hidden_size, config.weight_dropout) for size in sizes)
        else:  # an int8 folder (quantization_lstmlm.py): int8 layers of the same interface
            from .quantization_lstmlm import Int8LSTMLMLayer

            layers = (Int8LSTMLMLayer(size, config.hidden_size, quantization["reduce_range"]) for size in sizes)
        self.layers = nn.ModuleList(layers)
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

    @property
    def direct_decode(self) -> bool:
        """Whether one-token inputs run each layer's `step` (True, the default) or the fused sequence kernel."""
        return all(m.single_step for m in self.modules() if isinstance(m, LSTMLMLayer))

    @direct_decode.setter
    def direct_decode(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, LSTMLMLayer):
                module.single_step = value

    def _embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape (batch, sequence), got {tuple(input_ids.shape)}")
        if _checks_on_host(input_ids):
            # The lookup itself refuses an id outside the table (IndexError), so the check costs nothing on the good
            # path (it runs every decoding step).
            try:
                x = self.embed_tokens(input_ids)  # (batch, seq, embedding_size)
            except IndexError:
                self._check_ids(input_ids)
                raise
        else:
            vocab_size = self.config.vocab_size
            in_range = ((input_ids >= 0) & (input_ids < vocab_size)).all()
            torch._assert_async(in_range, f"`input_ids` must be token ids in [0, vocab_size={vocab_size})")
            x = self.embed_tokens(input_ids)
        p = self.config.embedding_row_dropout if self.training else 0.0  # (a config read costs ~3 us a token)
        if p > 0:
            # Drop whole vocabulary rows: every occurrence of a dropped token is zeroed in this batch. The rows are
            # dropped after the lookup (same result), so the embedding is used by calling it.
            keep = x.new_empty(self.config.vocab_size, 1).bernoulli_(1 - p) / (1 - p)  # (vocab, 1)
            x = x * keep[input_ids]
        return x

    def _check_ids(self, input_ids: torch.LongTensor) -> None:
        if input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"`input_ids` must be token ids in [0, vocab_size={self.config.vocab_size}), got values in "
                    f"[{low}, {high}]"
                )

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
            The state to start from (zero state when omitted); it is advanced in place.
        use_cache (`bool`, *optional*):
            Return the state after the last position as `cache` (default: `config.use_cache` in eval mode).
        """
        if kwargs:
            cache = _cache_argument(cache, kwargs, "LSTMLMModel.forward")
        if cache is not None and getattr(cache, "recording_steps", 0) and not self.training:
            return self._forward_recording(
                input_ids, attention_mask, inputs_embeds, cache, output_hidden_states, return_dict
            )
        if (
            cache is not None
            and input_ids is not None
            and input_ids.shape[-1] == 1
            and attention_mask is None
            and use_cache
            and not self.training
            and not (output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
            and (return_dict if return_dict is not None else self.config.return_dict)
        ):
            # The decoding step (`generate` sends one token and the cache, no mask): the loop below without the
            # bookkeeping that cannot apply (padding, dropout, hidden states, penalties). The same module calls.
            _check_cache(cache, input_ids.shape[0])
            hidden = self._embed(input_ids)
            for layer_idx, layer in enumerate(self.layers):
                hidden, (h, c) = layer(hidden, cache.get_state(layer_idx))
                cache.set_state(layer_idx, h, c)
            cache.seen_tokens += 1
            return LSTMLMModelOutput(
                last_hidden_state=self.proj(hidden) if self.proj is not None else hidden, cache=cache
            )
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        return_dict = return_dict if return_dict is not None else config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids)  # (batch, seq, embedding_size)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.embedding_size:
            raise ValueError(
                f"`inputs_embeds` must have shape (batch, sequence, {config.embedding_size}), "
                f"got {tuple(inputs_embeds.shape)}"
            )
        batch_size, seq_len = inputs_embeds.shape[:2]
        if cache is not None:
            _check_cache(cache, batch_size)
        elif use_cache:
            cache = LSTMLMCache(config=config)
        mask, right_padded = self._prepare_mask(attention_mask, batch_size, seq_len)  # (batch, seq) bool or None
        # Right padding with no state to return (training, `use_cache=False`): padding comes after every real token,
        # so it cannot change a real position's output; the layers then run the fused kernel on the whole rectangle
        # (a packed training step costs 1.4x a fused one on CPU: bench_padded_training.py); padding is zeroed after.
        unpacked = right_padded and cache is None
        layer_mask = None if unpacked else mask

        # One loop for every path (training, prompts, decoding steps): each layer decides how to run its recurrence.
        variational = config.variational_dropout
        hidden = _dropout(inputs_embeds, config.embedding_dropout, self.training, variational)
        all_hidden_states = (hidden,) if output_hidden_states else None
        last = len(self.layers) - 1
        for layer_idx, layer in enumerate(self.layers):
            state = cache.get_state(layer_idx) if cache is not None else None
            hidden, (h, c) = layer(hidden, state, layer_mask)  # (batch, seq, hidden)
            if cache is not None:
                cache.set_state(layer_idx, h, c)
            if unpacked:
                hidden = hidden * mask[..., None]
            if layer_idx < last:
                hidden = _dropout(hidden, config.hidden_dropout, self.training, variational)
                if output_hidden_states:
                    all_hidden_states += (hidden,)
        top = self.proj(hidden) if self.proj is not None else hidden  # (batch, seq, embedding_size)
        output = _dropout(top, config.output_dropout, self.training, variational)
        if output_hidden_states:
            all_hidden_states += (output,)
        if cache is not None:
            cache.seen_tokens += seq_len

        regularization_loss = None
        alpha, beta = config.activation_regularization, config.temporal_activation_regularization
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

    def _forward_recording(self, input_ids, attention_mask, inputs_embeds, cache, output_hidden_states, return_dict):
        """The forward while the cache records (assisted decoding, prompt lookup): the tokens are read one at a time
        (of a prompt, the last `cache.recording_steps`), the state kept before each, so that `cache.crop` can drop
        rejected drafts."""
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is None:
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`")
        seq_len = tokens.shape[1]
        # After the prompt every token is recorded: a draft can outgrow the count given at the start (transformers'
        # "heuristic" schedule lengthens the drafts as they get accepted).
        split = max(seq_len - cache.recording_steps, 0) if cache.seen_tokens == 0 else 0
        pieces = ([(0, split)] if split else []) + [(t, t + 1) for t in range(split, seq_len)]
        outputs = []
        for slot in cache.layers:  # the pieces below are ordinary forwards
            slot.record_past = False
        try:
            for start, end in pieces:
                if start >= split:
                    cache.record()
                mask = None
                if attention_mask is not None:
                    mask = attention_mask[:, : attention_mask.shape[1] - (seq_len - end)]
                outputs.append(
                    self.forward(
                        input_ids=None if input_ids is None else input_ids[:, start:end],
                        inputs_embeds=None if inputs_embeds is None else inputs_embeds[:, start:end],
                        attention_mask=mask,
                        cache=cache,
                        use_cache=True,
                        output_hidden_states=output_hidden_states,
                        return_dict=True,
                    )
                )
        finally:
            for slot in cache.layers:
                slot.record_past = True
        hidden_states = None
        if outputs[0].hidden_states is not None:
            hidden_states = tuple(
                torch.cat(per_layer, dim=1) for per_layer in zip(*(o.hidden_states for o in outputs), strict=True)
            )
        output = LSTMLMModelOutput(
            last_hidden_state=torch.cat([o.last_hidden_state for o in outputs], dim=1),
            cache=cache,
            hidden_states=hidden_states,
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()

    @staticmethod
    def _prepare_mask(attention_mask, batch_size: int, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        """The mask's last `seq_len` columns as bool (None when nothing is padded), and whether the padding is all on
        the right (every row's real tokens first). For more than one token, finding out reads the mask on the host
        (one synchronisation); a one-token mask goes to the layers' `torch.where`."""
        if attention_mask is None:
            return None, False
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size or attention_mask.shape[1] < seq_len:
            raise ValueError(
                f"`attention_mask` must have shape (batch={batch_size}, >= {seq_len}) with its last columns for "
                f"the current tokens, got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask[:, attention_mask.shape[1] - seq_len :].bool()
        if seq_len == 1:
            return mask, False
        all_real, holes = torch.stack((mask.all(), (mask[:, 1:] > mask[:, :-1]).any())).tolist()
        return (None, False) if all_real else (mask, not holes)


class LSTMLMForCausalLM(LSTMLMPreTrainedModel, LSTMLMGenerationMixin):
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
        # An nn.Linear whose inference forward runs the kernel picked for this machine (`kernels_lstmlm`).
        self.lm_head = DecodingLinear(config.embedding_size, config.vocab_size, bias=True)
        quantization = _quantization(config)
        if quantization is not None:  # an int8 folder (quantization_lstmlm.py): int8 weights
            from .quantization_lstmlm import Int8Linear

            self.lm_head = Int8Linear(config.embedding_size, config.vocab_size, quantization["reduce_range"])
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
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if not (isinstance(logits_to_keep, int) and (logits_to_keep == 0 or logits_to_keep >= hidden.shape[1])):
            hidden = slice_logits_to_keep(hidden, logits_to_keep)  # (not for a decoding step: its one position is kept)
        logits = self.lm_head(hidden)  # (batch, kept, vocab)

        loss = None
        if labels is not None:
            if labels.shape != (logits.shape[0], logits.shape[1]):
                raise ValueError(
                    f"`labels` must have shape {tuple(logits.shape[:2])} (one per input position), "
                    f"got {tuple(labels.shape)}"
                )
            bad = ((labels < 0) | (labels >= self.config.vocab_size)) & (labels != -100)
            message = f"`labels` must be -100 or token ids in [0, vocab_size={self.config.vocab_size})"
            if not _checks_on_host(labels) or torch.compiler.is_compiling():
                # No host synchronisation on an accelerator, no graph break under torch.compile.
                torch._assert_async(~bad.any(), message)
            elif bool(bad.any()):
                raise ValueError(message)
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
    "LSTMLMLayer",
    "LSTMLMCache",
    "LSTMLMPreTrainedModel",
    "LSTMLMModel",
    "LSTMLMForCausalLM",
    "LSTMLMForSequenceClassification",
]
