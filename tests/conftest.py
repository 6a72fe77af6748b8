"""Shared fixtures: one tiny config for every model test, and a repository-root path."""

from pathlib import Path

import pytest
import torch

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_tiny_config(**overrides) -> LSTMLMConfig:
    """A config small enough for fast tests; dropouts are off unless a test turns them on."""
    values = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        embedding_dropout=0.0,
        hidden_dropout=0.0,
        output_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=0,
    )
    values.update(overrides)
    return LSTMLMConfig(**values)


@pytest.fixture
def tiny_config() -> LSTMLMConfig:
    return make_tiny_config()


@pytest.fixture
def tiny_model(tiny_config) -> LSTMLMForCausalLM:
    torch.manual_seed(0)
    return LSTMLMForCausalLM(tiny_config).eval()


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
