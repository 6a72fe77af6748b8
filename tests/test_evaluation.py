"""Token- and word-level perplexity: the summed NLL over a long text with the state carried across windows equals
the hand-computed NLL of one forward pass, and word-level perplexity divides it by the hand-counted words."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from modeling_lstmlm import LSTMLMForCausalLM
from modeling_lstmlm.data import TextSplit
from modeling_lstmlm.evaluation import PerplexityResult, evaluate_split, evaluate_text, score_stream

TOKENIZER_DIR = REPO_ROOT / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip("the committed tokenizer/ folder is missing")
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def hand_nll(model, ids: torch.LongTensor) -> float:
    """Summed NLL of ids[1:] from one forward pass over the whole stream."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1]
    return F.cross_entropy(logits.double(), ids[1:], reduction="sum").item()


@pytest.mark.parametrize("window", [1, 3, 7, 1000], ids=["w1", "w3", "w7", "one-window"])
def test_carried_state_equals_one_forward_pass(window):
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(initializer_range=1.0)).eval()
    ids = torch.randint(0, 64, (50,))
    result = score_stream(model, ids, window=window)
    assert result.num_tokens == 49
    assert result.nll_sum == pytest.approx(hand_nll(model, ids), rel=1e-5)


def test_word_level_perplexity_on_a_known_text(tokenizer):
    text = "To be, or not to be:\nthat is the question.\n"
    # Words by hand: "To" "be," "or" "not" "to" "be:" + <eos>, "that" "is" "the" "question." + <eos>.
    expected_words = 6 + 1 + 4 + 1
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(vocab_size=len(tokenizer))).eval()
    ids = torch.tensor([tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"])
    nll = hand_nll(model, ids)

    result = evaluate_text(model, tokenizer, text, window=4)
    assert result.num_words == expected_words
    assert result.num_tokens == ids.numel() - 1
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.word_perplexity == pytest.approx(math.exp(nll / expected_words), rel=1e-5)
    assert result.token_perplexity == pytest.approx(math.exp(nll / (ids.numel() - 1)), rel=1e-5)


def test_perplexity_result_arithmetic():
    result = PerplexityResult(nll_sum=20.0, num_tokens=10, num_words=5)
    assert result.loss == 2.0
    assert result.token_perplexity == pytest.approx(math.exp(2.0))
    assert result.word_perplexity == pytest.approx(math.exp(4.0))
    assert result.to_dict("test_")["test_word_perplexity"] == pytest.approx(math.exp(4.0))
    assert PerplexityResult(nll_sum=1.0, num_tokens=1).word_perplexity is None


def test_evaluate_split_uses_the_split_word_count():
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config()).eval()
    split = TextSplit(name="test", input_ids=torch.randint(0, 64, (30,)), num_words=7)
    result = evaluate_split(model, split, window=8)
    assert result.num_words == 7 and result.num_tokens == 29
    assert result.nll_sum == pytest.approx(hand_nll(model, split.input_ids), rel=1e-5)


def test_stateless_model_is_scored_with_a_sliding_window():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (60,))
    # Each target is scored once, with the context the sliding window gives it: check against a manual loop.
    window, stride = 16, 4
    expected = 0.0
    for first in range(1, 60, stride):
        last = min(first + stride, 60)
        start = max(0, last - 1 - window)
        with torch.no_grad():
            logits = model(input_ids=ids[start : last - 1][None]).logits[0, first - 1 - start :]
        expected += F.cross_entropy(logits, ids[first:last], reduction="sum").item()
    result = score_stream(model, ids, window=window, stride=stride)
    assert result.num_tokens == 59
    assert result.nll_sum == pytest.approx(expected, rel=1e-6)
    # A window covering everything is one forward pass.
    assert score_stream(model, ids[:30], window=32, stride=32).nll_sum == pytest.approx(hand_nll(model, ids[:30]))


def test_training_mode_is_restored_and_bad_input_rejected():
    model = LSTMLMForCausalLM(make_tiny_config()).train()
    score_stream(model, torch.arange(10), window=4)
    assert model.training
    with pytest.raises(ValueError, match="at least 2 tokens"):
        score_stream(model, torch.tensor([3]))
    with pytest.raises(ValueError, match="`window` must be >= 1"):
        score_stream(model, torch.arange(10), window=0)
