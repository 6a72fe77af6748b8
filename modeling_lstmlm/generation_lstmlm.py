"""Generation with a recurrent state: `LSTMLMCache` (the per-layer (h, c) as a transformers `Cache`) and
`LSTMLMGenerationMixin`, the few `GenerationMixin` overrides that make `generate()` carry that state (every decoding
strategy, resuming from a returned cache, a beam-search cache refused on reuse), and `_Output`, the base of the
model's output classes (built once per generated token, so built cheaply).

This file travels as remote code next to `modeling_lstmlm.py`, which imports it relatively: it imports only the
configuration file, transformers and torch.
"""

import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.utils import ModelOutput, logging

from .configuration_lstmlm import LSTMLMConfig

logger = logging.get_logger(__name__)


class LSTMLMCache(DynamicCache):
    """The recurrent state of an LSTM language model, as a transformers `Cache`.

    One recurrent-state slot per LSTM layer holds `(h, c)` stacked as a `(batch, 2, hidden_size)` tensor (batch on
    dim 0, so beam search reorders it with `reorder_cache`). `seen_tokens` counts the positions the state has
    consumed (padding included), so that a cache returned by `generate` can be passed back with the full sequence
    and only the unseen tokens are fed. `reset()` empties it (states, `seen_tokens`) for reuse.

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
        self.from_beam_search = False  # set by beam search: the rows are beams, not the returned sequences
        self._history = []  # (seen_tokens, per-layer states) recorded for `crop` (see `activate_past_recording`)

    def get_state(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The `(h, c)` of layer `layer_idx`, each `(batch, hidden_size)` (views of the slot), or None before the
        first token."""
        slot = self.layers[layer_idx]
        if not slot.has_previous_state[0]:
            return None
        return slot.recurrent_states[0].unbind(1)

    def set_state(self, layer_idx: int, h: torch.Tensor, c: torch.Tensor) -> None:
        """Store layer `layer_idx`'s new `(h, c)`: in place without autograd (the slot keeps its address, as a static
        cache does), as a new tensor when gradients flow (the old one may be saved for the backward pass)."""
        state = torch.stack((h, c), dim=1)  # (batch, 2, hidden)
        slot = self.layers[layer_idx]
        old = slot.recurrent_states[0]
        if old is not None and not torch.is_grad_enabled() and old.shape == state.shape and old.dtype == state.dtype:
            old.copy_(state)
        else:
            slot.recurrent_states[0] = state
            slot.device, slot.dtype = state.device, state.dtype
        slot.is_recurrent_states_initialized[0] = slot.has_previous_state[0] = True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    # ------------------------------------------------------------ rollback (assisted decoding, prompt lookup)
    # transformers (5.25 and later) verifies draft tokens in one forward and then `crop`s the rejected ones off the
    # cache. A recurrent state cannot drop tokens, so while recording the model keeps the state as it was before each
    # of the last `recording_steps` tokens it reads (`record`), and `crop` restores one of those.

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None, **kwargs) -> None:
        """Keep the state before each of the last `recurrent_states_to_keep` tokens of every forward (at least 1)."""
        for slot in self.layers:
            slot.record_past = True
            slot.recurrent_states_to_keep = max(1, recurrent_states_to_keep or 1)
        self._history = []

    @property
    def recording_steps(self) -> int:
        """How many trailing tokens of a forward must be read one at a time and recorded (0: not recording)."""
        slot = self.layers[0] if self.layers else None
        if slot is None or not getattr(slot, "record_past", False):
            return 0
        return slot.recurrent_states_to_keep

    def stop_recording(self) -> None:
        """End `activate_past_recording`: forwards read their tokens as usual again, and the record is dropped."""
        for slot in self.layers:
            slot.record_past = False
        self._history = []

    def record(self) -> None:
        """Keep a copy of the current state (and `seen_tokens`), to which `crop` can go back."""
        states = [slot.recurrent_states[0].clone() if slot.has_previous_state[0] else None for slot in self.layers]
        self._history.append((self.seen_tokens, states))

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the newest `-tokens_to_remove` tokens (a negative count, as transformers 5.25 passes it; 0 only
        forgets the record), going back to the state recorded before them.

        Only positions recorded since `activate_past_recording` or the last `crop` can be restored.
        """
        if tokens_to_remove > 0:
            raise ValueError(
                f"`crop` takes the number of tokens to remove as a negative integer, got {tokens_to_remove}"
            )
        target = self.seen_tokens + tokens_to_remove
        history, self._history = self._history, []
        if target == self.seen_tokens:
            return
        for seen, states in history:
            if seen == target:
                for layer_idx, state in enumerate(states):
                    slot = self.layers[layer_idx]
                    slot.recurrent_states[0] = state
                    slot.is_recurrent_states_initialized[0] = slot.has_previous_state[0] = state is not None
                self.seen_tokens = target
                return
        recorded = sorted({seen for seen, _ in history})
        raise ValueError(
            f"Cannot roll the recurrent state back by {-tokens_to_remove} tokens (from {self.seen_tokens} read to "
            f"{target}): only the positions recorded since `activate_past_recording` or the last `crop` can be "
            f"restored, here {recorded}"
        )

    def reset(self) -> None:
        """Forget everything: the states, `seen_tokens`, the recording and the beam-search mark (the next use starts
        from zero)."""
        for slot in self.layers:
            slot.recurrent_states[0] = None
            slot.is_recurrent_states_initialized[0] = slot.has_previous_state[0] = False
        self.stop_recording()
        self.seen_tokens = 0
        self.from_beam_search = False


class _Output(ModelOutput):
    """A `ModelOutput` built in ~2 us instead of ~9 (two are built per generated token): the field names are read once
    per class (`_output_class`), not on every attribute set. The same object: non-None fields as keys in field order."""

    _FIELD_NAMES: tuple[str, ...] = ()

    def __setattr__(self, name, value):
        name = self._replace_old_cache_name(name)
        if value is not None and name in self._FIELD_NAMES:
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __post_init__(self):
        first = self.__dict__[self._FIELD_NAMES[0]]
        if first is None or isinstance(first, torch.Tensor):
            return  # `__setattr__` has put every non-None field in
        super().__post_init__()  # ModelOutput's other forms (a first field that is an iterable of pairs, ...)


def _output_class(cls):
    cls = dataclass(cls)
    cls._FIELD_NAMES = tuple(f.name for f in fields(cls))
    return cls


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


def _check_cache(cache, batch_size: int | None) -> None:
    if not isinstance(cache, LSTMLMCache):
        raise ValueError(f"`cache` must be an LSTMLMCache (as returned by this model), got {type(cache).__name__}")
    if cache.from_beam_search:
        raise ValueError(
            "This cache was returned by beam search: its rows are the beams as the search left them, not the returned "
            "sequences (a finished hypothesis left the beams earlier), so it cannot continue them. Generate from "
            "`out.sequences` without a cache (or call `cache.reset()` to reuse the object)"
        )
    state = cache.get_state(0)
    if state is not None and batch_size is not None and state[0].shape[0] != batch_size:
        raise ValueError(
            f"The cache holds the state of {state[0].shape[0]} sequences but the input has {batch_size} rows "
            "(a cache from `num_return_sequences` holds one state per returned sequence)"
        )


class LSTMLMGenerationMixin(GenerationMixin):
    """`GenerationMixin` for a model whose cache is an `LSTMLMCache`: refuses what cannot work on a recurrent state,
    keeps the state on, feeds only the newest token at each step, and marks a beam-search cache."""

    def _prepare_generation_config(self, generation_config, **kwargs):
        """Refuses what cannot work on a recurrent state, and keeps the state on unless this call turns it off."""
        call_use_cache = kwargs.get("use_cache", getattr(generation_config, "use_cache", None))
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        if generation_config.use_cache is False and call_use_cache is None:
            # `config.use_cache=False` is a training setting (the Trainer writes it and `save_pretrained` keeps it);
            # the state costs O(1) per token, so generation keeps it unless the call itself passes `use_cache=False`.
            logger.info("Generating with the recurrent state although the model's config says `use_cache=False`")
            generation_config.use_cache = True
        if generation_config.cache_implementation not in (None, "dynamic", "static"):
            raise ValueError(
                "LSTMLM keeps a fixed-size recurrent state as its cache (None, 'dynamic' and 'static' all give an "
                f"LSTMLMCache); `cache_implementation={generation_config.cache_implementation!r}` is not supported"
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
            _check_cache(user_cache, None)
            user_cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        # A fixed-size state: "static" and "dynamic" are the same object (its slots are updated in place).
        model_kwargs["cache"] = LSTMLMCache(config=self.config)
        if getattr(generation_config, "is_assistant", False):
            # The draft model of assisted decoding: its rejected tokens are cropped off after each round.
            model_kwargs["cache"].activate_past_recording(
                recurrent_states_to_keep=generation_config.num_assistant_tokens
            )

    def _assisted_decoding(self, *args, **kwargs):
        """Assisted decoding and prompt lookup (transformers 5.25+): the model records the state before each draft
        token so that the rejected ones can be cropped; the returned cache stops recording."""
        try:
            return super()._assisted_decoding(*args, **kwargs)
        finally:
            cache = kwargs.get("cache")
            if isinstance(cache, LSTMLMCache):
                cache.stop_recording()

    def _beam_search(self, *args, **kwargs):
        """Beam search, after which the cache is marked: its rows are the beams, not the returned sequences, so
        passing it back raises a clear error instead of silently continuing other text."""
        try:
            return super()._beam_search(*args, **kwargs)
        finally:
            if isinstance(kwargs.get("cache"), LSTMLMCache):
                kwargs["cache"].from_beam_search = True

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
            model_inputs["input_ids"] = input_ids[:, -1:]
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


__all__ = ["LSTMLMCache", "LSTMLMGenerationMixin"]
