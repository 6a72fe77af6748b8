"""Perplexity of a causal language model over a long text, token-level and word-level.

The text is scored as one stream, window after window, with the LSTM state carried from one window to the next: every
token is predicted from the whole text before it, so no overlap between windows is needed.

- token-level perplexity = exp(summed next-token NLL / number of predicted tokens);
- word-level perplexity = exp(summed NLL of the text / number of words), words counted as pytorch/examples
  word_language_model does (whitespace-separated tokens plus one per line end, see `data.count_words`). It does
  not depend on the tokenizer, so models with different vocabularies compare on it.

Example:

```python
>>> from modeling_lstmlm.evaluation import evaluate_text
>>> result = evaluate_text(model, tokenizer, open("data/wikitext-2/valid.txt").read())
>>> result.token_perplexity, result.word_perplexity
```
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging

from .data import as_long_tensor, count_words, tokenize_text
from .modeling_lstmlm import LSTMLMCache

logger = logging.get_logger(__name__)


@dataclass
class PerplexityResult:
    """Summed NLL (nats) of a text and what it is divided by.

    Args:
        nll_sum (`float`): summed next-token negative log-likelihood.
        num_tokens (`int`): predicted tokens.
        num_words (`int`, *optional*): words of the text (`data.count_words`), for the word-level perplexity.
    """

    nll_sum: float
    num_tokens: int
    num_words: int | None = None

    @property
    def loss(self) -> float:
        """Mean NLL per token (what the Trainer calls the loss)."""
        return self.nll_sum / self.num_tokens

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def word_perplexity(self) -> float | None:
        if not self.num_words:
            return None
        return math.exp(self.nll_sum / self.num_words)

    def to_dict(self, prefix: str = "") -> dict:
        """The numbers as a flat dict, keys prefixed (e.g. `prefix="test_"`)."""
        values = asdict(self)
        values.update(loss=self.loss, token_perplexity=self.token_perplexity, word_perplexity=self.word_perplexity)
        return {f"{prefix}{key}": value for key, value in values.items()}


def _is_lstmlm(model) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "lstmlm"


@torch.no_grad()
def score_stream(
    model,
    input_ids: torch.LongTensor | np.ndarray,
    window: int = 256,
    stride: int | None = None,
    show_progress: bool = False,
) -> PerplexityResult:
    """Summed NLL of `input_ids[1:]`, each token predicted from the tokens before it.

    An LSTMLM reads the stream in windows of `window` tokens with its (h, c) cache passed from window to window, so
    every token is predicted from the whole stream before it: the same as one forward pass over everything (up to
    float rounding). A model without a carried state (GPT-2) is scored with a sliding window instead: each forward
    pass reads up to `window` tokens and scores only its last `stride` ones (default `window // 2`), so every token
    has at least `window - stride` tokens of context (fewer at the very start).

    Args:
        model: a causal LM (`LSTMLMForCausalLM` or any transformers causal LM).
        input_ids (`torch.LongTensor` or `np.ndarray` of shape `(num_tokens,)`): the stream, usually
            `<bos> + tokens(text)`; a memory-mapped token file is read window by window (bounded memory).
        window (`int`, defaults to 256): tokens per forward pass.
        stride (`int`, *optional*): for models without a carried state, new tokens scored per forward pass.
        show_progress (`bool`): show a progress bar.
    """
    if not isinstance(input_ids, np.ndarray):
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    num_tokens = len(input_ids)
    if num_tokens < 2:
        raise ValueError(f"Need at least 2 tokens to score (1 context + 1 target), got {num_tokens}")
    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}")
    stateful = _is_lstmlm(model)
    stride = window if stateful else (stride if stride is not None else max(1, window // 2))
    if not 1 <= stride <= window:
        raise ValueError(f"`stride` must be in [1, window={window}], got {stride}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cache = LSTMLMCache(config=model.config) if stateful else None
    nll_sum, count = 0.0, 0
    # Targets are input_ids[1:]; each step scores targets [first, last) (indices into input_ids).
    firsts = range(1, num_tokens, stride)
    try:
        for first in logging.tqdm(firsts, desc="Scoring", disable=not show_progress):
            last = min(first + stride, num_tokens)
            context_start = first - 1 if stateful else max(0, last - 1 - window)
            inputs = as_long_tensor(input_ids[context_start : last - 1])[None].to(device)  # (1, <= window)
            targets = as_long_tensor(input_ids[first:last]).to(device)  # (scored,)
            if stateful:
                logits = model(input_ids=inputs, cache=cache, use_cache=True).logits[0]  # (window, vocab)
            else:
                logits = model(input_ids=inputs).logits[0, first - 1 - context_start :]  # (scored, vocab)
            nll_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            count += targets.numel()
    finally:
        model.train(was_training)
    return PerplexityResult(nll_sum=nll_sum, num_tokens=count)


def evaluate_text(
    model,
    tokenizer,
    text: str,
    window: int = 256,
    stride: int | None = None,
    cache_dir: str | None = None,
    show_progress: bool = False,
) -> PerplexityResult:
    """Token- and word-level perplexity of `text` (scored as `<bos> + tokens(text)`, every text token predicted)."""
    input_ids = tokenize_text(text, tokenizer, cache_dir=cache_dir)
    result = score_stream(model, input_ids, window=window, stride=stride, show_progress=show_progress)
    result.num_words = count_words(text)
    return result


def evaluate_split(
    model, split, window: int = 256, stride: int | None = None, show_progress: bool = False
) -> PerplexityResult:
    """Perplexity of a `data.TextSplit` (its stream and its word count)."""
    result = score_stream(model, split.input_ids, window=window, stride=stride, show_progress=show_progress)
    result.num_words = split.num_words
    return result


__all__ = ["PerplexityResult", "evaluate_split", "evaluate_text", "score_stream"]
