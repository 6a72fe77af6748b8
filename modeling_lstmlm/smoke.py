"""Tiny random models for the scripts' `--smoke` modes: seconds to build, with the real tokenizer's vocabulary."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .configuration_lstmlm import LSTMLMConfig
from .modeling_lstmlm import LSTMLMForCausalLM
from .packaged import tokenizer_dir as packaged_tokenizer_dir


def tiny_model(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int = 16, num_hidden_layers: int = 1, seed: int = 0
) -> LSTMLMForCausalLM:
    """An untrained `LSTMLMForCausalLM` sized for `tokenizer`, with its special token ids, in eval mode."""
    torch.manual_seed(seed)
    config = LSTMLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LSTMLMForCausalLM(config).eval()


def save_tiny_model(folder: str | Path, tokenizer_dir: str | Path | None = None, **kwargs) -> str:
    """Save `tiny_model(...)` and the tokenizer from `tokenizer_dir` (default: the packaged one) into `folder`; returns
    the folder as a string."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir if tokenizer_dir is not None else packaged_tokenizer_dir())
    tiny_model(tokenizer, **kwargs).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
