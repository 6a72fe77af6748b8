"""Configuration of the LSTM language model.

This file travels with every saved model folder as remote code: it imports only transformers.
"""

from transformers import PreTrainedConfig


class LSTMLMConfig(PreTrainedConfig):
    r"""
    Configuration of an LSTM language model: token embedding -> a stack of LSTM layers -> (optional projection)
    -> linear head over the vocabulary.

    Args:
        vocab_size (`int`, *optional*, defaults to 8192):
            Number of tokens in the vocabulary (the bundled byte-level BPE tokenizer has 8192).
        hidden_size (`int`, *optional*, defaults to 512):
            Size of the hidden and cell state of every LSTM layer.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of stacked LSTM layers.
        embedding_size (`int`, *optional*):
            Size of the token embeddings; defaults to `hidden_size`. When it differs from `hidden_size`, the top of
            the stack is projected to `embedding_size` so that the output layer can still be tied to the embedding.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Share the embedding matrix with the output layer (the output layer keeps its own bias).
        embedding_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the embedded tokens, before the first LSTM layer (AWD-LSTM's `dropouti`).
        hidden_dropout (`float`, *optional*, defaults to 0.1):
            Dropout between LSTM layers (AWD-LSTM's `dropouth`).
        output_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the top of the stack, before the output layer (AWD-LSTM's `dropout`).
        weight_dropout (`float`, *optional*, defaults to 0.0):
            DropConnect on the hidden-to-hidden weights of every LSTM layer, a new mask each forward pass in
            training (AWD-LSTM's `wdrop`). The fused LSTM kernel still runs.
        embedding_row_dropout (`float`, *optional*, defaults to 0.0):
            Probability of dropping a whole vocabulary row of the embedding matrix in training (AWD-LSTM's
            `dropoute`); the kept rows are rescaled.
        variational_dropout (`bool`, *optional*, defaults to `False`):
            Use locked (variational) dropout: one mask per sequence, shared over time steps, for the embedding,
            hidden and output dropouts.
        activation_regularization (`float`, *optional*, defaults to 0.0):
            AR coefficient (alpha): adds `alpha * mean(h_top_dropped ** 2)` to the training loss.
        temporal_activation_regularization (`float`, *optional*, defaults to 0.0):
            TAR coefficient (beta): adds `beta * mean((h_top[t] - h_top[t-1]) ** 2)` to the training loss.
        classifier_dropout (`float`, *optional*):
            Dropout before a sequence-classification head; defaults to `output_dropout`.
        classifier_pooling (`str`, *optional*, defaults to `"last"`):
            What the sequence-classification head reads: `"last"`, the hidden state of each row's last real token, or
            `"concat"`, that state concatenated with the max and the mean over the row's real tokens (ULMFiT's concat
            pooling; the head's input is then `3 * embedding_size` wide).
        initializer_range (`float`, *optional*, defaults to 0.1):
            Embeddings and the output layer are initialised uniformly in `[-initializer_range, initializer_range]`;
            LSTM weights uniformly in `[-1/sqrt(hidden_size), 1/sqrt(hidden_size)]` as in PyTorch.
        use_cache (`bool`, *optional*, defaults to `True`):
            Return the per-layer (h, c) state as the cache, so that generation costs O(1) per token.
        pad_token_id (`int`, *optional*, defaults to 1):
            Padding token id.
        bos_token_id (`int`, *optional*, defaults to 0):
            Beginning-of-text token id.
        eos_token_id (`int` or `list[int]`, *optional*, defaults to 0):
            End-of-text token id(s).

    Example:

    ```python
    >>> from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

    >>> config = LSTMLMConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=2)
    >>> model = LSTMLMForCausalLM(config)
    >>> model.config.embedding_size
    256
    ```"""

    model_type = "lstmlm"

    vocab_size: int = 8192
    hidden_size: int = 512
    num_hidden_layers: int = 2
    embedding_size: int | None = None
    tie_word_embeddings: bool = True
    embedding_dropout: float = 0.1
    hidden_dropout: float = 0.1
    output_dropout: float = 0.1
    weight_dropout: float = 0.0
    embedding_row_dropout: float = 0.0
    variational_dropout: bool = False
    activation_regularization: float = 0.0
    temporal_activation_regularization: float = 0.0
    classifier_dropout: float | None = None
    classifier_pooling: str = "last"
    initializer_range: float = 0.1
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0

    def __post_init__(self, **kwargs):
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "embedding_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        dropouts = ["embedding_dropout", "hidden_dropout", "output_dropout", "weight_dropout", "embedding_row_dropout"]
        if self.classifier_dropout is not None:
            dropouts.append("classifier_dropout")
        for name in dropouts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
        if self.classifier_pooling not in ("last", "concat"):
            raise ValueError(f"`classifier_pooling` must be 'last' or 'concat', got {self.classifier_pooling!r}")
        for name in ("activation_regularization", "temporal_activation_regularization"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")
        if (
            isinstance(self.initializer_range, bool)
            or not isinstance(self.initializer_range, (int, float))
            or self.initializer_range <= 0
        ):
            raise ValueError(f"`initializer_range` must be a number > 0, got {self.initializer_range!r}")
        for name in ("variational_dropout", "tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            for token_id in ids:
                if token_id is None:
                    continue
                if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < self.vocab_size:
                    raise ValueError(
                        f"`{name}` must be None or a token id in [0, vocab_size={self.vocab_size}), got {value!r}"
                    )

    @property
    def layer_types(self) -> list[str]:
        # Tells `generate` to build a cache of recurrent-state layers (one per LSTM layer) instead of KV layers.
        return ["linear_attention"] * self.num_hidden_layers


LSTMLMConfig.register_for_auto_class()

__all__ = ["LSTMLMConfig"]
