"""Shared fixtures: one tiny config for every model test, and a repository-root path."""

from pathlib import Path

import pytest
import torch

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]


def matmul_atol(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """Tolerance for `x @ weight.T` computed twice with different shapes or kernels (rtol=0 alongside it).

    BLAS libraries split and order a dot product's K terms by shape and CPU (MKL on AMD rounds a 1-row and a 7-row
    product differently), so bit equality is not portable. Each order's result lies within gamma_K * sum|x_k w_k| of
    the exact value (Higham's bound, gamma_K = K*u / (1 - K*u), u = eps/2 of the dtype); two orders differ by at most
    twice that. A bias counts as one more term. The bound is taken over all outputs, in float64 so that it is not itself
    rounded.
    """
    k = x.shape[-1] + (bias is not None)
    u = torch.finfo(x.dtype).eps / 2
    gamma = k * u / (1 - k * u)
    magnitude = x.detach().abs().double() @ weight.detach().abs().double().T
    if bias is not None:
        magnitude = magnitude + bias.detach().abs().double()
    magnitude = magnitude.max()
    return float(2 * gamma * magnitude)


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


def make_lively_model(seed=0, **overrides) -> LSTMLMForCausalLM:
    """A tiny untied model whose greedy output varies (the default init collapses onto one token), in eval mode."""
    torch.manual_seed(seed)
    model = LSTMLMForCausalLM(make_tiny_config(**{"tie_word_embeddings": False, "eos_token_id": None, **overrides}))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 1.0)
    return model.eval()


def random_ids(batch, seq, seed=0):
    """Seeded token ids in [2, 64) (no bos/pad) of shape (batch, seq) for the tiny config."""
    return torch.randint(2, 64, (batch, seq), generator=torch.Generator().manual_seed(seed))


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
