"""LSTMLMModel / LSTMLMForCausalLM: outputs, loss, masks, tying, save/load and the remote-code load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_config, matmul_atol
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM

from modeling_lstmlm import LSTMLMCache, LSTMLMConfig, LSTMLMForCausalLM, LSTMLMModel
from modeling_lstmlm.modeling_lstmlm import LSTMLMLayer


def _ids(batch=2, seq=7, vocab=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, seq), generator=generator)


def _model(**overrides):
    torch.manual_seed(0)
    return LSTMLMForCausalLM(make_tiny_config(**overrides)).eval()


# ---------------------------------------------------------------- structure and outputs


def test_architecture_is_embedding_lstm_stack_head(tiny_model, tiny_config):
    backbone = tiny_model.model
    assert isinstance(backbone.embed_tokens, torch.nn.Embedding)
    assert [type(layer) for layer in backbone.layers] == [LSTMLMLayer] * tiny_config.num_hidden_layers
    # The parameters of a one-layer nn.LSTM, under its names (folders saved with nn.LSTM layers load unchanged).
    reference = torch.nn.LSTM(tiny_config.embedding_size, tiny_config.hidden_size, batch_first=True)
    for layer in backbone.layers:
        assert {k: v.shape for k, v in layer.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()
        }
    assert backbone.proj is None
    assert tiny_model.lm_head.weight.shape == (tiny_config.vocab_size, tiny_config.embedding_size)
    assert tiny_model._is_stateful


def test_forward_shapes_hidden_states_and_cache(tiny_model, tiny_config):
    ids = _ids()
    out = tiny_model(ids, use_cache=True, output_hidden_states=True)
    assert out.logits.shape == (2, 7, tiny_config.vocab_size)
    assert len(out.hidden_states) == tiny_config.num_hidden_layers + 1
    assert all(h.shape == (2, 7, tiny_config.hidden_size) for h in out.hidden_states)
    assert isinstance(out.cache, LSTMLMCache)
    assert out.cache.seen_tokens == 7
    h, c = out.cache.get_state(tiny_config.num_hidden_layers - 1)
    # The top layer's h at the last position is the last hidden state (no projection, no dropout in eval).
    torch.testing.assert_close(h, out.hidden_states[-1][:, -1], rtol=0, atol=0)
    assert c.shape == (2, tiny_config.hidden_size)


def test_return_dict_false_gives_tuples(tiny_model):
    ids = _ids()
    as_dict = tiny_model(ids, labels=ids, use_cache=True)
    loss, logits, cache = tiny_model(ids, labels=ids, use_cache=True, return_dict=False)
    assert torch.equal(loss, as_dict.loss)
    assert torch.equal(logits, as_dict.logits)
    assert isinstance(cache, LSTMLMCache)
    logits_only = tiny_model(ids, use_cache=False, return_dict=False)
    assert len(logits_only) == 1 and torch.equal(logits_only[0], as_dict.logits)


def test_outputs_behave_as_plain_model_outputs():
    """The output classes build faster than ModelOutput (field names read once per class): the same object for every
    way of building, reading, copying and flattening one, compared with a plain ModelOutput of the same fields."""
    import copy
    import pickle
    from dataclasses import dataclass

    from torch.utils import _pytree
    from transformers.utils import ModelOutput

    from modeling_lstmlm.modeling_lstmlm import LSTMLMCausalLMOutput

    @dataclass
    class Plain(ModelOutput):
        loss: torch.FloatTensor | None = None
        logits: torch.FloatTensor | None = None
        cache: object | None = None
        hidden_states: tuple | None = None

    logits, loss = torch.randn(2, 3, 5), torch.tensor(1.5)
    cases = [
        {"logits": logits},
        {"loss": loss, "logits": logits, "hidden_states": (logits,)},
        {"loss": None, "logits": logits, "cache": "state"},
        {},
    ]
    for kwargs in cases:
        fast, plain = LSTMLMCausalLMOutput(**kwargs), Plain(**kwargs)
        assert list(fast.keys()) == list(plain.keys()) and fast.to_tuple() == plain.to_tuple()
        assert [getattr(fast, k) for k in ("loss", "logits", "cache", "hidden_states")] == [
            getattr(plain, k) for k in ("loss", "logits", "cache", "hidden_states")
        ]
        for copied in (copy.copy(fast), copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
            assert type(copied) is LSTMLMCausalLMOutput and list(copied.keys()) == list(plain.keys())
        leaves, spec = _pytree.tree_flatten(fast)
        assert len(leaves) == len(_pytree.tree_flatten(plain)[0])
        assert list(_pytree.tree_unflatten(leaves, spec).keys()) == list(plain.keys())
    out, plain = LSTMLMCausalLMOutput(logits=logits), Plain(logits=logits)
    out.loss = plain.loss = loss  # setting a field later adds the key, as on any ModelOutput
    assert list(out.keys()) == list(plain.keys()) == ["logits", "loss"] and out[1] is loss and out["loss"] is loss
    pairs = [("logits", logits), ("cache", "state")]  # ModelOutput's other form: an iterable of (key, value) pairs
    assert list(LSTMLMCausalLMOutput(pairs).keys()) == list(Plain(pairs).keys()) == ["logits", "cache"]
    legacy = LSTMLMCausalLMOutput(logits=logits, past_key_values="state")  # the deprecated name of `cache`
    assert legacy.cache == "state" and list(legacy.keys()) == ["logits", "cache"]


def test_backbone_output_is_what_the_head_reads(tiny_model):
    ids = _ids()
    hidden = tiny_model.model(ids).last_hidden_state
    torch.testing.assert_close(tiny_model(ids).logits, tiny_model.lm_head(hidden), rtol=0, atol=0)


def test_logits_to_keep_keeps_the_last_positions(tiny_model):
    ids = _ids()
    full = tiny_model(ids).logits
    kept = tiny_model(ids, logits_to_keep=1).logits
    assert kept.shape == (2, 1, 64)
    # The head runs on 1 row instead of 7: another matmul shape, so BLAS may sum in another order (it does with MKL on
    # AMD EPYC, ~1.5e-8). Tolerance: the float32 rounding bound of that matmul, not bit equality.
    hidden = tiny_model.model(ids).last_hidden_state[:, -1:]
    torch.testing.assert_close(
        kept, full[:, -1:], rtol=0, atol=matmul_atol(hidden, tiny_model.lm_head.weight, tiny_model.lm_head.bias)
    )


def test_state_continues_across_calls(tiny_model):
    ids = _ids(seq=9)
    full = tiny_model(ids).logits
    first = tiny_model(ids[:, :4], use_cache=True)
    second = tiny_model(ids[:, 4:], cache=first.cache, use_cache=True)
    torch.testing.assert_close(second.logits, full[:, 4:], rtol=0, atol=1e-6)
    assert second.cache.seen_tokens == 9


def test_inputs_embeds_equal_input_ids(tiny_model):
    ids = _ids()
    embeds = tiny_model.get_input_embeddings()(ids)
    torch.testing.assert_close(tiny_model(inputs_embeds=embeds).logits, tiny_model(ids).logits, rtol=0, atol=0)


def test_projection_when_embedding_size_differs():
    model = _model(hidden_size=16, embedding_size=8)
    assert model.model.proj.weight.shape == (8, 16)
    assert model.lm_head.weight.shape == (64, 8)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model(_ids()).logits.shape == (2, 7, 64)


# ---------------------------------------------------------------- loss


def test_loss_is_shifted_cross_entropy_ignoring_minus_100(tiny_model):
    ids = _ids(seq=8)
    labels = ids.clone()
    labels[0, 2] = -100
    labels[1, 5:] = -100
    out = tiny_model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    keep = targets != -100
    expected = -torch.log_softmax(logits[keep].double(), dim=-1)[torch.arange(int(keep.sum())), targets[keep]].mean()
    assert keep.sum() == 2 * 7 - 1 - 3  # one label ignored in row 0, three in row 1
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-6, atol=1e-6)


def test_loss_honours_num_items_in_batch(tiny_model):
    ids = _ids(seq=8)
    out = tiny_model(ids, labels=ids, num_items_in_batch=torch.tensor(100))
    summed = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(out.loss, summed / 100, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = _model()
    model.train()
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# ---------------------------------------------------------------- padding


def test_right_and_left_padding_give_each_row_its_own_result(tiny_model):
    short, long = _ids(batch=1, seq=4, seed=1), _ids(batch=1, seq=7, seed=2)
    alone_short, alone_long = tiny_model(short).logits, tiny_model(long).logits
    for side in ("right", "left"):
        ids = torch.full((2, 7), 1)
        mask = torch.zeros(2, 7, dtype=torch.long)
        cols = slice(0, 4) if side == "right" else slice(3, 7)
        ids[0, cols], mask[0, cols] = short[0], 1
        ids[1], mask[1] = long[0], 1
        out = tiny_model(ids, attention_mask=mask, use_cache=True)
        torch.testing.assert_close(out.logits[0, cols], alone_short[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(out.logits[1], alone_long[0], rtol=0, atol=1e-6)
        # The state after a padded row is the state after its last real token.
        state_short = tiny_model(short, use_cache=True).cache.get_state(1)
        torch.testing.assert_close(out.cache.get_state(1)[0][0], state_short[0][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(out.cache.get_state(1)[1][0], state_short[1][0], rtol=0, atol=1e-6)


def test_right_padded_training_runs_unpacked_and_equals_left_padded(monkeypatch):
    """Training on right padding (no state returned) runs the fused kernel on the whole rectangle, without packing;
    the loss and every gradient equal those of the same rows left-padded (which go through packing), within 1e-5."""
    from modeling_lstmlm import layer_lstmlm

    packs = []
    real_pack = layer_lstmlm.pack_padded_sequence
    monkeypatch.setattr(layer_lstmlm, "pack_padded_sequence", lambda *a, **k: packs.append(1) or real_pack(*a, **k))
    rows = [_ids(batch=1, seq=n, seed=n)[0].tolist() for n in (7, 3, 5)]
    width = max(map(len, rows))
    results = {}
    for side in ("right", "left"):
        fill = [[1] * (width - len(row)) for row in rows]
        ids = torch.tensor([row + pad if side == "right" else pad + row for row, pad in zip(rows, fill, strict=True)])
        mask = torch.tensor([[int(t != 1) for t in row] for row in ids.tolist()])
        model = _model(embedding_dropout=0.0, hidden_dropout=0.0, output_dropout=0.0, weight_dropout=0.0).train()
        packs.clear()
        # Labels on the real tokens after the first (left padding would otherwise score the first from a pad).
        first = torch.arange(width) == (mask == 0).sum(dim=1, keepdim=True) * (side == "left")
        labels = ids.masked_fill((mask == 0) | first, -100)
        out = model(ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        out.loss.backward()
        assert len(packs) == (0 if side == "right" else 2), side  # one per layer on the packed path
        for hidden in out.hidden_states[1:]:  # zero at every padded position, after every layer
            assert hidden[mask == 0].abs().max() == 0
        grads = {name: p.grad for name, p in model.named_parameters()}
        results[side] = (out.loss.detach(), grads)
    torch.testing.assert_close(results["right"][0], results["left"][0], rtol=0, atol=1e-5)
    for name, grad in results["right"][1].items():
        torch.testing.assert_close(grad, results["left"][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_all_padding_row_keeps_its_state(tiny_model):
    ids = _ids(seq=5)
    first = tiny_model(ids, use_cache=True)
    before = [tuple(t.clone() for t in first.cache.get_state(i)) for i in range(2)]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]])
    tiny_model(_ids(seq=3, seed=5), attention_mask=mask, cache=first.cache, use_cache=True)
    for layer, (h, c) in enumerate(before):
        torch.testing.assert_close(first.cache.get_state(layer)[0][1], h[1], rtol=0, atol=0)
        torch.testing.assert_close(first.cache.get_state(layer)[1][1], c[1], rtol=0, atol=0)


# ---------------------------------------------------------------- tying and embeddings


def test_tie_and_untie():
    tied = _model()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = _model(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_resize_token_embeddings_keeps_the_tie():
    model = _model()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(80)
    assert model.config.vocab_size == 80
    assert model.get_input_embeddings().weight.shape == (80, 16)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.bias.shape == (80,)
    torch.testing.assert_close(model.get_input_embeddings().weight[:64], old, rtol=0, atol=0)
    assert model(torch.tensor([[70, 79]])).logits.shape == (1, 2, 80)


def test_embedding_getters_and_setters():
    model = _model()
    new = torch.nn.Embedding(64, 16)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new
    model.tie_weights()
    assert model.get_output_embeddings().weight is new.weight


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": False}, {"embedding_size": 8}],
    ids=["tied", "untied", "projected"],
)
def test_save_load_gives_bitwise_equal_logits(tmp_path, overrides):
    model = _model(**overrides)
    ids = _ids()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is LSTMLMForCausalLM
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    tied = overrides.get("tie_word_embeddings", True)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tied
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) == (not tied)  # tied weights are stored once
    assert "model.embed_tokens.weight" in keys


def test_saved_folder_has_code_and_auto_map(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_lstmlm.py").exists() and (tmp_path / "configuration_lstmlm.py").exists()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_lstmlm.LSTMLMConfig",
        "AutoModel": "modeling_lstmlm.LSTMLMModel",
        "AutoModelForCausalLM": "modeling_lstmlm.LSTMLMForCausalLM",
        "AutoModelForSequenceClassification": "modeling_lstmlm.LSTMLMForSequenceClassification",
    }


def test_auto_model_loads_the_backbone(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    backbone = AutoModel.from_pretrained(tmp_path).eval()
    assert type(backbone) is LSTMLMModel
    ids = _ids()
    torch.testing.assert_close(backbone(ids).last_hidden_state, tiny_model.model(ids).last_hidden_state, rtol=0, atol=0)


def test_tie_survives_load_then_resize(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded.resize_token_embeddings(70)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    reloaded.save_pretrained(tmp_path / "resized")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resized")
    assert again.config.vocab_size == 70
    assert again.lm_head.weight is again.model.embed_tokens.weight
    assert torch.equal(again.lm_head.weight, reloaded.lm_head.weight)


def test_bfloat16_load(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = _ids()
    logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), tiny_model(ids).logits, rtol=0.05, atol=0.05)
    generated = model.generate(ids[:1], max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert generated.shape == (1, 11)


def test_missing_and_corrupt_weights_raise_os_error(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(OSError, match="the safetensors file is corrupt or truncated"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(OSError, match="model.safetensors|no file named"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


REMOTE_CODE_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_lstmlm"] = None  # this machine "never installed" the package
    try:
        import modeling_lstmlm  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_lstmlm is importable in the child")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
        generated = model.generate(torch.tensor(ids), max_new_tokens=5, do_sample=False, eos_token_id=None)
    print(json.dumps({"config": type(config).__name__, "logits": logits.tolist(), "generated": generated.tolist()}))
    """
)


def test_remote_code_load_in_a_process_without_the_package(tmp_path, tiny_model):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    ids = _ids()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHILD, str(folder), json.dumps(ids.tolist())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["config"] == "LSTMLMConfig"
    with torch.no_grad():
        expected = tiny_model(ids).logits
        generated = tiny_model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    torch.testing.assert_close(torch.tensor(child["logits"]), expected, rtol=0, atol=1e-6)
    assert child["generated"] == generated.tolist()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make_kwargs", "message"),
    [
        (lambda: {"input_ids": torch.tensor([[1, 64]])}, "`input_ids` must be token ids in [0, vocab_size=64)"),
        (lambda: {"input_ids": torch.tensor([[-1, 3]])}, "`input_ids` must be token ids in [0, vocab_size=64)"),
        (lambda: {"input_ids": torch.tensor([1, 2, 3])}, "`input_ids` must have shape (batch, sequence)"),
        (lambda: {}, "exactly one of `input_ids` or `inputs_embeds`"),
        (
            lambda: {"input_ids": torch.tensor([[1, 2]]), "inputs_embeds": torch.zeros(1, 2, 16)},
            "exactly one of `input_ids` or `inputs_embeds`",
        ),
        (lambda: {"inputs_embeds": torch.zeros(1, 2, 5)}, "`inputs_embeds` must have shape (batch, sequence, 16)"),
        (
            lambda: {"input_ids": torch.tensor([[2, 3, 4]]), "attention_mask": torch.ones(1, 2)},
            "`attention_mask` must have shape (batch=1, >= 3)",
        ),
        (
            lambda: {"input_ids": torch.tensor([[2, 3, 4]]), "labels": torch.tensor([[2, 3]])},
            "`labels` must have shape (1, 3)",
        ),
        (
            lambda: {"input_ids": torch.tensor([[2, 3, 4]]), "labels": torch.tensor([[2, 3, 99]])},
            "`labels` must be -100 or token ids in [0, vocab_size=64)",
        ),
        (
            lambda: {"input_ids": torch.tensor([[2, 3]]), "cache": object()},
            "`cache` must be an LSTMLMCache",
        ),
    ],
    ids=[
        "id-too-large",
        "id-negative",
        "ids-1d",
        "no-input",
        "ids-and-embeds",
        "embeds-wrong-size",
        "mask-too-short",
        "labels-wrong-shape",
        "label-out-of-range",
        "foreign-cache",
    ],
)
def test_bad_input_raises_value_error(tiny_model, make_kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        tiny_model(**make_kwargs())
    assert message in str(excinfo.value)


def test_initialisation_ranges():
    model = LSTMLMForCausalLM(LSTMLMConfig(vocab_size=100, hidden_size=32, initializer_range=0.05))
    assert model.model.embed_tokens.weight.abs().max() <= 0.05
    bound = 32**-0.5
    for layer in model.model.layers:
        for param in layer.parameters():
            assert param.abs().max() <= bound
    assert torch.count_nonzero(model.lm_head.bias) == 0


def test_cache_of_another_batch_size_is_refused(tiny_model):
    cache = tiny_model(_ids(batch=3), use_cache=True).cache
    with pytest.raises(ValueError, match="The cache holds the state of 3 sequences but the input has 2 rows"):
        tiny_model(_ids(batch=2), cache=cache)
