"""The layer module that owns the recurrence (`LSTMLMLayer`) and what rests on it: old folders, the cache's life
cycle (reset, beam search, static), float32 state under autocast, and no host synchronisation on the step paths."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make_lively_model, random_ids
from transformers import AutoModelForCausalLM

import modeling_lstmlm.modeling_lstmlm as modeling
from modeling_lstmlm import LSTMLMCache
from modeling_lstmlm.modeling_lstmlm import LSTMLMLayer

OLD_FOLDER = Path(__file__).parent / "fixtures" / "lstmlm-nn-lstm-layout"


def _nn_lstm(layer: LSTMLMLayer) -> torch.nn.LSTM:
    reference = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True)
    reference.load_state_dict(layer.state_dict())
    return reference


# ---------------------------------------------------------------- the layer


def test_layer_equals_nn_lstm_on_sequences_steps_and_padding():
    torch.manual_seed(0)
    layer = LSTMLMLayer(8, 16)
    reference = _nn_lstm(layer)
    x = torch.randn(3, 7, 8)
    h0, c0 = torch.randn(3, 16), torch.randn(3, 16)
    out, (h, c) = layer(x, (h0, c0))
    want, (wh, wc) = reference(x, (h0[None], c0[None]))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    torch.testing.assert_close((h, c), (wh[0], wc[0]), rtol=0, atol=1e-6)
    # One token: `step`, reached by calling the module; the same as the fused kernel within float32 rounding.
    out1, (h1, c1) = layer(x[:, :1], (h0, c0))
    want1, (wh1, wc1) = reference(x[:, :1], (h0[None], c0[None]))
    torch.testing.assert_close(out1, want1, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.step(x[:, 0], (h0, c0)), (wh1[0], wc1[0]), rtol=0, atol=1e-6)
    # Padding anywhere: each row gives what its real tokens give alone; a row with none keeps its state.
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1, 1], [0] * 7], dtype=torch.bool)
    out, (h, c) = layer(x, (h0, c0), mask)
    alone, (ah, ac) = reference(x[1:2, mask[1]], (h0[None, 1:2], c0[None, 1:2]))
    torch.testing.assert_close(out[1, mask[1]], alone[0], rtol=0, atol=1e-6)
    assert torch.equal(out[1, ~mask[1]], torch.zeros(3, 16)) and torch.equal(out[2], torch.zeros(7, 16))
    torch.testing.assert_close((h[1], c[1]), (ah[0, 0], ac[0, 0]), rtol=0, atol=1e-6)
    assert torch.equal(h[2], h0[2]) and torch.equal(c[2], c0[2])


def test_folder_saved_with_nn_lstm_layers_loads_with_identical_logits_and_ids():
    # Saved by the previous version (commit 9b37278, `nn.LSTM` layers): same parameter names, so it loads as is.
    expected = json.loads((OLD_FOLDER / "expected.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(OLD_FOLDER).eval()
    assert all(type(layer) is LSTMLMLayer for layer in model.model.layers)
    ids = torch.tensor(expected["input_ids"])
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-5)
    prompt = ids[:, : expected["prompt_length"]]
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert generated.tolist() == expected["generated"]
    assert len(set(generated[0, 3:].tolist())) > 2  # the comparison is not vacuous: the output varies


# ---------------------------------------------------------------- the cache's life cycle


def test_reset_clears_the_state_and_seen_tokens():
    model = make_lively_model()
    ids = random_ids(2, 6)
    cache = model(ids, use_cache=True).cache
    cache.reset()
    assert cache.seen_tokens == 0 and cache.get_state(0) is None
    with torch.no_grad():
        again = model(ids, cache=cache, use_cache=True)
        fresh = model(ids, use_cache=True)
    torch.testing.assert_close(again.logits, fresh.logits, rtol=0, atol=0)
    assert again.cache.seen_tokens == 6
    reused = model.generate(ids, max_new_tokens=5, do_sample=False, cache=cache.__class__(config=model.config))
    cache.reset()  # a reset cache resumes nothing: generate reads the whole prompt again
    assert model.generate(ids, max_new_tokens=5, do_sample=False, cache=cache).tolist() == reused.tolist()


def test_beam_search_cache_is_refused_with_a_clear_error():
    model = make_lively_model()
    prompt = random_ids(1, 4)
    out = model.generate(
        prompt, max_new_tokens=5, num_beams=3, num_return_sequences=3, do_sample=False, return_dict_in_generate=True
    )
    assert isinstance(out.cache, LSTMLMCache) and out.cache.from_beam_search
    with pytest.raises(ValueError, match="This cache was returned by beam search"):
        model.generate(out.sequences, cache=out.cache, max_new_tokens=3, do_sample=False)
    with pytest.raises(ValueError, match="This cache was returned by beam search"):
        model(out.sequences[:, -1:], cache=out.cache)
    out.cache.reset()  # reusable after a reset
    fresh = model.generate(out.sequences, max_new_tokens=3, do_sample=False)
    assert model.generate(out.sequences, cache=out.cache, max_new_tokens=3, do_sample=False).tolist() == fresh.tolist()


def test_static_cache_implementation_gives_the_default_ids():
    model = make_lively_model()
    prompt = random_ids(2, 4)
    default = model.generate(prompt, max_new_tokens=10, do_sample=False)
    static = model.generate(prompt, max_new_tokens=10, do_sample=False, cache_implementation="static")
    assert static.tolist() == default.tolist()
    assert len(set(default[0, 4:].tolist())) > 2


# ---------------------------------------------------------------- autocast


def test_carried_state_stays_float32_under_bf16_autocast():
    model = make_lively_model()
    ids = random_ids(2, 6)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, use_cache=True)  # a training window
        assert out.logits.dtype == torch.bfloat16  # the matmuls did run in bf16
        out.loss.backward()
        window2 = model(ids, cache=out.cache, use_cache=True)  # the next window starts from the carried state
    for cache in (out.cache, window2.cache):
        for layer in range(model.config.num_hidden_layers):
            assert all(t.dtype == torch.float32 for t in cache.get_state(layer))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model(ids, use_cache=True).cache
        model(ids[:, :1], cache=cache, use_cache=True)  # a decoding step
    assert all(t.dtype == torch.float32 for t in cache.get_state(1))


# ---------------------------------------------------------------- host synchronisation


class _HostSyncs:
    """Counts the calls that make the host wait for an accelerator (`.item()`, `bool/int/float(tensor)`, `.cpu()`,
    `.tolist()`, `.numpy()`), with the input checks in their accelerator form (device-side asserts)."""

    NAMES = ("item", "__bool__", "__int__", "__float__", "__index__", "cpu", "tolist", "numpy")

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(modeling, "_checks_on_host", lambda tensor: False)
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def method(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return method


def test_decoding_and_training_steps_make_no_host_synchronisation(monkeypatch):
    model = make_lively_model(weight_dropout=0.3, embedding_row_dropout=0.1, activation_regularization=1.0)
    ids = random_ids(2, 6)
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    syncs = _HostSyncs(monkeypatch)
    with torch.no_grad():
        model(ids[:, :1], cache=cache, use_cache=True)  # a decoding step as generate sends it
        model(ids[:, :1], cache=cache, attention_mask=torch.ones(2, 8, dtype=torch.long), use_cache=True)
        inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=1, cache=cache, use_cache=True)
        model(**inputs)
    assert syncs.calls == []
    model.train()
    out = model(ids, labels=ids)  # a training step
    out.loss.backward()
    assert syncs.calls == []
    window = LSTMLMCache(config=model.config)
    model(ids, labels=ids, cache=window, use_cache=True).loss.backward()  # a stateful-BPTT window
    assert syncs.calls == []


def test_torch_compile_sees_no_graph_break_in_the_decoding_step_or_the_training_forward():
    """`torch._dynamo.explain`: one graph, no break, for a decoding step (what generate sends) and a training forward
    with labels and every regulariser (the label range check becomes a device-side assert under compile)."""
    torch._dynamo.reset()
    model = make_lively_model(weight_dropout=0.3, activation_regularization=1.0, temporal_activation_regularization=1.0)
    ids = random_ids(2, 6)
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        step = torch._dynamo.explain(model.forward)(ids[:, :1], cache=cache, use_cache=True, logits_to_keep=1)
    model.train()
    train = torch._dynamo.explain(model.forward)(ids, labels=ids)
    assert (step.graph_count, step.graph_break_count) == (1, 0), step.break_reasons
    assert (train.graph_count, train.graph_break_count) == (1, 0), train.break_reasons
    torch._dynamo.reset()


def test_the_lean_decoding_branch_equals_the_general_loop():
    """`generate`'s one-token steps take a lean branch of the backbone's forward; `output_hidden_states=True` sends
    the same step through the general loop: same logits (float32 rounding: the same kernels on the same shapes, so
    1e-6) and the same new state."""
    model = make_lively_model()
    ids = random_ids(3, 5)
    with torch.no_grad():
        lean_cache = model(ids[:, :4], use_cache=True).cache
        general_cache = model(ids[:, :4], use_cache=True).cache
        lean = model(ids[:, 4:], cache=lean_cache, use_cache=True)
        general = model(ids[:, 4:], cache=general_cache, use_cache=True, output_hidden_states=True)
    torch.testing.assert_close(lean.logits, general.logits, rtol=0, atol=1e-6)
    assert lean.cache.seen_tokens == general.cache.seen_tokens == 5
    for layer_idx in range(model.config.num_hidden_layers):
        for got, want in zip(lean.cache.get_state(layer_idx), general.cache.get_state(layer_idx), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # The config's defaults still apply to a decoding step: hidden states and tuples when the config asks for them.
    model.config.output_hidden_states = True
    with torch.no_grad():
        states = model(ids[:, :1], cache=lean_cache, use_cache=True).hidden_states
    assert len(states) == 1 + model.config.num_hidden_layers
    model.config.output_hidden_states, model.config.return_dict = False, False
    with torch.no_grad():
        assert isinstance(model.model(ids[:, :1], cache=lean_cache, use_cache=True), tuple)
