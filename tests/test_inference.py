"""CPU inference: the direct single-token decode step, int8 weights, and the ONNX export with its onnxruntime loop."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoModelForCausalLM

from modeling_lstmlm import LSTMLMCache, LSTMLMForCausalLM, LSTMLMModel
from modeling_lstmlm.modeling_lstmlm import LSTMLMLayer
from modeling_lstmlm.onnx_export import OnnxLSTMLM, compare_with_model, export_onnx
from modeling_lstmlm.quantization import quantize_model
from modeling_lstmlm.quantization_lstmlm import Int8Linear, Int8LSTMLMLayer

# The ONNX tests need the [onnx] extra; the core-only run of scripts/check_oldest.sh skips them.
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs onnx and onnxruntime (pip install 'lstmlm[onnx]')",
)
SHAPES = {"tied": {}, "projection": {"embedding_size": 8, "tie_word_embeddings": True}}


def _model(seed=0, **overrides) -> LSTMLMForCausalLM:
    torch.manual_seed(seed)
    return LSTMLMForCausalLM(make_tiny_config(**overrides)).eval()


def _ids(batch, seq, seed=0, vocab=64):
    return torch.randint(6, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _count_calls(modules):
    """Forward-hook counters on `modules`; returns (counter list, handles)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    return calls, [module.register_forward_hook(hook) for module in modules]


def _count_steps(monkeypatch, cls=LSTMLMLayer):
    """Counts calls of `cls.step` (the one-token recurrence) by patching it; returns the counter list."""
    calls, original = [0], cls.step

    def step(self, x, state):
        calls[0] += 1
        return original(self, x, state)

    monkeypatch.setattr(cls, "step", step)
    return calls


def _steps(model, ids, prompt_length, direct):
    """Logits of every decoding step after a prompt, each step fed one token with the cache (no grad, eval)."""
    model.model.direct_decode = direct
    try:
        with torch.no_grad():
            out = model(ids[:, :prompt_length], use_cache=True)
            logits = [out.logits[:, -1]]
            for t in range(prompt_length, ids.shape[1]):
                out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
                logits.append(out.logits[:, -1])
    finally:
        model.model.direct_decode = True
    return torch.stack(logits, 1), out.cache  # (batch, steps, vocab)


# ---------------------------------------------------------------- direct decode step


@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_direct_step_equals_the_nn_lstm_step_and_the_full_forward(batch, shape):
    model = _model(**SHAPES[shape])
    ids = _ids(batch, 12)
    direct, direct_cache = _steps(model, ids, 4, direct=True)
    fused, fused_cache = _steps(model, ids, 4, direct=False)
    torch.testing.assert_close(direct, fused, rtol=0, atol=1e-5)
    with torch.no_grad():
        full = model(ids).logits[:, 3:]  # one forward pass over everything
    torch.testing.assert_close(direct, full, rtol=0, atol=1e-5)
    assert direct_cache.seen_tokens == fused_cache.seen_tokens == 12
    for layer in range(model.config.num_hidden_layers):
        for got, want in zip(direct_cache.get_state(layer), fused_cache.get_state(layer), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_greedy_ids_are_identical_on_both_step_paths(batch, shape):
    model = _model(**SHAPES[shape])
    prompt = _ids(batch, 5, seed=1)
    direct = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    model.model.direct_decode = False
    fused = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert direct.tolist() == fused.tolist()


def test_generate_decodes_through_the_layer_modules_with_their_step(monkeypatch):
    # Every use of a layer is a module call (hooks, offload and adapters see it); one-token calls run `step`.
    model = _model()
    layers = model.config.num_hidden_layers
    calls, handles = _count_calls(model.model.layers)
    steps = _count_steps(monkeypatch)
    model.generate(_ids(2, 6), max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert calls[0] == 10 * layers  # the prompt and 9 steps, each a call of every layer
    assert steps[0] == 9 * layers  # the 9 steps through `step`, the prompt through the fused kernel
    calls[0] = steps[0] = 0
    model.generate(_ids(1, 1), max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert calls[0] == steps[0] == 10 * layers  # a one-token prompt is a decoding step too
    calls[0] = steps[0] = 0
    model.model.direct_decode = False
    model.generate(_ids(2, 6), max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert calls[0] == 10 * layers and steps[0] == 0  # the fused-kernel step path: the prompt and 9 steps
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize(
    "context",
    ["train-mode", "grad-enabled", "multi-token", "padded"],
)
def test_one_token_runs_the_step_in_every_mode_and_longer_inputs_the_fused_kernel(context, monkeypatch):
    model = _model()
    cache = model(_ids(2, 3), use_cache=True).cache
    calls, handles = _count_calls(model.model.layers)
    steps = _count_steps(monkeypatch)
    if context == "train-mode":
        model.train()
        model(_ids(2, 1), cache=cache, use_cache=True).logits.sum().backward()
    elif context == "grad-enabled":
        model(_ids(2, 1), cache=cache, use_cache=True).logits.sum().backward()
    elif context == "multi-token":
        with torch.no_grad():
            model(_ids(2, 4), cache=cache, use_cache=True)
    else:
        with torch.no_grad():
            model(_ids(2, 1), attention_mask=torch.tensor([[1], [0]]), cache=cache, use_cache=True)
    assert calls[0] == model.config.num_hidden_layers
    assert steps[0] == (0 if context == "multi-token" else model.config.num_hidden_layers)
    if context in ("train-mode", "grad-enabled"):  # the step is differentiable
        assert model.model.layers[0].weight_hh_l0.grad.abs().sum() > 0
    for handle in handles:
        handle.remove()


def test_padded_one_token_step_keeps_the_padded_rows_state():
    model = _model()
    with torch.no_grad():
        cache = model(_ids(2, 3), use_cache=True).cache
        before = [tuple(t.clone() for t in cache.get_state(i)) for i in range(model.config.num_hidden_layers)]
        alone = model(_ids(2, 1)[:1], cache=_row(cache, 0), use_cache=True)
        out = model(_ids(2, 1), attention_mask=torch.tensor([[1], [0]]), cache=cache, use_cache=True)
    torch.testing.assert_close(out.logits[:1], alone.logits, rtol=0, atol=1e-6)
    for i in range(model.config.num_hidden_layers):
        for got, want, kept in zip(cache.get_state(i), alone.cache.get_state(i), before[i], strict=True):
            torch.testing.assert_close(got[:1], want, rtol=0, atol=1e-6)
            torch.testing.assert_close(got[1:], kept[1:], rtol=0, atol=0)  # the padded row did not move


def _row(cache, row):
    """A copy of `cache` holding only batch row `row`."""
    new = copy.deepcopy(cache)
    new.reorder_cache(torch.tensor([row]))
    return new


def test_direct_step_reads_the_weights_after_an_optimizer_step():
    model = _model()
    ids = _ids(2, 8)
    before, _ = _steps(model, ids, 3, direct=True)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    after, _ = _steps(model, ids, 3, direct=True)
    fused, _ = _steps(model, ids, 3, direct=False)
    assert (after - before).abs().max() > 1e-3  # the step changed the outputs ...
    torch.testing.assert_close(after, fused, rtol=0, atol=1e-5)  # ... and the direct step sees it


def test_direct_step_reads_the_weights_after_load_state_dict():
    model, other = _model(seed=0), _model(seed=1)
    ids = _ids(2, 8)
    _steps(model, ids, 3, direct=True)  # run once on the old weights
    model.load_state_dict(other.state_dict())
    got, _ = _steps(model, ids, 3, direct=True)
    want, _ = _steps(other, ids, 3, direct=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_beam_search_is_the_same_on_both_step_paths():
    model = _model()
    prompt = _ids(2, 4, seed=2)
    kwargs = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False, eos_token_id=None)
    direct = model.generate(prompt, **kwargs)
    model.model.direct_decode = False
    assert direct.tolist() == model.generate(prompt, **kwargs).tolist()


def test_decode_step_hidden_states_and_tuple_output_match_the_nn_lstm_path():
    model = _model(embedding_size=8)
    token = _ids(2, 1, seed=3)
    with torch.no_grad():
        cache_a = model(_ids(2, 3), use_cache=True).cache
        cache_b = copy.deepcopy(cache_a)
        direct = model.model(token, cache=cache_a, use_cache=True, output_hidden_states=True, return_dict=False)
        model.model.direct_decode = False
        fused = model.model(token, cache=cache_b, use_cache=True, output_hidden_states=True, return_dict=False)
    assert len(direct) == len(fused) == 3  # (last_hidden_state, cache, hidden_states)
    torch.testing.assert_close(direct[0], fused[0], rtol=0, atol=1e-6)
    assert len(direct[2]) == len(fused[2]) == model.config.num_hidden_layers + 1
    for got, want in zip(direct[2], fused[2], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_causal_lm_decoding_step_shortcut_equals_the_backbone_path():
    # `generate`'s steps (one token + the cache, nothing else) skip the backbone's generic forward; an all-ones
    # attention mask sends the same step through it. Both must give the same logits, state and output forms.
    model = _model(embedding_size=8)
    token = _ids(2, 1, seed=3)
    with torch.no_grad():
        cache_a = model(_ids(2, 3), use_cache=True).cache
        cache_b, cache_c = copy.deepcopy(cache_a), copy.deepcopy(cache_a)
        short = model(token, cache=cache_a, use_cache=True)
        generic = model(token, cache=cache_b, attention_mask=torch.ones(2, 4, dtype=torch.long), use_cache=True)
        as_tuple = model(token, cache=cache_c, use_cache=False, return_dict=False)
    assert short.cache is cache_a and generic.cache is cache_b
    torch.testing.assert_close(short.logits, generic.logits, rtol=0, atol=0)
    assert cache_a.seen_tokens == cache_b.seen_tokens == 4
    for layer in range(model.config.num_hidden_layers):
        for got, want in zip(cache_a.get_state(layer), cache_b.get_state(layer), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert len(as_tuple) == 1  # use_cache=False: logits only (the state is still advanced in place)
    torch.testing.assert_close(as_tuple[0], short.logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds the state of 2 sequences but the input has 3 rows"):
        with torch.no_grad():
            model(_ids(3, 1), cache=cache_a, use_cache=True)


def test_deprecated_cache_argument_names_still_work():
    model = _model()
    with torch.no_grad():
        cache = model(_ids(1, 3), use_cache=True).cache
        expected = model(_ids(1, 1), cache=copy.deepcopy(cache), use_cache=True).logits
        for name in ("past_key_values", "cache_params"):
            with pytest.warns(FutureWarning, match=f"`{name}` is deprecated for `LSTMLMForCausalLM.forward`"):
                got = model(_ids(1, 1), use_cache=True, **{name: copy.deepcopy(cache)}).logits
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            with pytest.warns(FutureWarning, match=f"`{name}` is deprecated for `LSTMLMModel.forward`"):
                model.model(_ids(1, 1), **{name: copy.deepcopy(cache)})
        with pytest.warns(FutureWarning, match="Both `past_key_values` and `cache` are set"):
            got = model(_ids(1, 1), cache=copy.deepcopy(cache), past_key_values=None, use_cache=True).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_decode_step_outputs_do_not_alias_the_cache():
    model = _model()
    out = model(_ids(1, 3), use_cache=True)
    with torch.no_grad():
        first = model.model(_ids(1, 1), cache=out.cache, use_cache=True).last_hidden_state
        kept = first.clone()
        model.model(_ids(1, 1, seed=5), cache=out.cache, use_cache=True)  # the next step writes the cache in place
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


def test_one_token_without_a_cache_is_the_full_forward_of_that_token():
    model = _model()
    token = _ids(3, 1)
    with torch.no_grad():
        direct = model(token, use_cache=False)
        model.model.direct_decode = False
        fused = model(token, use_cache=False)
    assert direct.cache is None
    torch.testing.assert_close(direct.logits, fused.logits, rtol=0, atol=1e-6)


def test_bfloat16_model_decodes_on_the_direct_step():
    model = _model().to(torch.bfloat16)
    ids = _ids(2, 8)
    direct, _ = _steps(model, ids, 3, direct=True)
    fused, _ = _steps(model, ids, 3, direct=False)
    assert direct.dtype == torch.bfloat16
    torch.testing.assert_close(direct.float(), fused.float(), rtol=0, atol=3e-2)  # bf16 rounding, ~3 digits
    assert model.generate(ids[:, :3], max_new_tokens=4, do_sample=False, eos_token_id=None).shape == (2, 7)


# ---------------------------------------------------------------- int8


def _logit_tolerance(logits: torch.Tensor) -> float:
    return 0.02 * float(logits.abs().max())  # int8 weights and activations: ~1% of the logits' range


def test_quantize_model_replaces_the_layers_and_stays_close_to_float():
    model = _model(embedding_size=8)
    ids = _ids(2, 10)
    with torch.no_grad():
        expected = model(ids).logits
    quantized = quantize_model(copy.deepcopy(model))
    assert all(isinstance(layer, Int8LSTMLMLayer) for layer in quantized.model.layers)
    assert isinstance(quantized.lm_head, Int8Linear)
    assert quantized.config.quantization == {"method": "int8", "reduce_range": True}
    assert quantized.config.tie_word_embeddings is False
    with torch.no_grad():
        out = quantized(ids, use_cache=True)  # a whole sequence: the int8 cell position by position
    full = out.logits
    steps, step_cache = _steps(quantized, ids, 4, direct=True)  # a prompt of 4, then one-token decoding steps
    torch.testing.assert_close(full, expected, rtol=0, atol=_logit_tolerance(expected))
    # The LSTM state: the same int8 calls either way, so equal up to float32 rounding.
    for layer_idx in range(quantized.config.num_hidden_layers):
        for got, want in zip(step_cache.get_state(layer_idx), out.cache.get_state(layer_idx), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # The int8 head quantizes its input with one scale per call (all positions at once vs one per step).
    torch.testing.assert_close(steps, full[:, 3:], rtol=0, atol=_logit_tolerance(expected))


def test_int8_decoding_runs_the_int8_step_not_the_fused_kernel(monkeypatch):
    model = quantize_model(_model())
    linear_calls, linear_handles = _count_calls([model.lm_head])
    hh_calls, hh_handles = _count_calls([layer.hh for layer in model.model.layers])
    lstm_calls, lstm_handles = _count_calls(model.model.layers)
    steps = _count_steps(monkeypatch, Int8LSTMLMLayer)
    model.generate(_ids(1, 5), max_new_tokens=6, do_sample=False, eos_token_id=None)
    layers = model.config.num_hidden_layers
    assert lstm_calls[0] == 6 * layers  # the prompt and the 5 steps, each a module call
    assert steps[0] == 5 * layers  # the 5 steps go through `Int8LSTMLMLayer.step`
    assert linear_calls[0] == 1 + 5  # the head: once for the prompt, once per step
    assert hh_calls[0] == (5 + 5) * layers  # the recurrent int8 product: once per prompt token and once per step
    for handle in linear_handles + lstm_handles + hh_handles:
        handle.remove()


@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_step_equals_the_int8_matmuls_and_gate_math(reduce_range):
    torch.manual_seed(0)
    layer = Int8LSTMLMLayer.from_float(LSTMLMLayer(24, 16), reduce_range=reduce_range)
    x, h, c = torch.randn(3, 24) * 3, torch.randn(3, 16), torch.randn(3, 16)
    with torch.no_grad():
        i, f, g, o = (layer.ih(x) + layer.hh(h)).chunk(4, dim=1)  # the two int8 matmuls (Int8Linear)
        c_expected = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_expected = torch.sigmoid(o) * torch.tanh(c_expected)
        h_new, c_new = layer.step(x, (h, c))
    torch.testing.assert_close(c_new, c_expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_new, h_expected, rtol=0, atol=1e-6)


def test_int8_folder_saves_loads_with_the_auto_class_and_generates_the_same(tmp_path):
    model = quantize_model(_model(embedding_size=8))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["quantization"] == {"method": "int8", "reduce_range": True}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.lm_head, Int8Linear) and loaded.lm_head.weight_int8.dtype == torch.int8
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    prompt = _ids(2, 4, seed=4)
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert loaded.generate(prompt, **kwargs).tolist() == model.generate(prompt, **kwargs).tolist()


def test_from_pretrained_quantize_int8_equals_quantize_model(tmp_path):
    float_model = _model(embedding_size=8)
    float_model.save_pretrained(tmp_path / "float")
    expected = quantize_model(copy.deepcopy(float_model))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantize="int8")
    assert isinstance(loaded.lm_head, Int8Linear) and all(isinstance(x, Int8LSTMLMLayer) for x in loaded.model.layers)
    assert loaded.config.quantization == {"method": "int8", "reduce_range": True} and not loaded.training
    assert loaded.state_dict().keys() == expected.state_dict().keys()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    backbone = LSTMLMModel.from_pretrained(tmp_path / "float", quantize="int8")  # the other heads too
    assert all(isinstance(x, Int8LSTMLMLayer) for x in backbone.layers)
    expected.save_pretrained(tmp_path / "int8")  # an int8 folder loads as it is, with or without the argument
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "int8", quantize="int8")
    for name, tensor in expected.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="`quantize` must be None or one of \\('int8',\\), got 'int4'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantize="int4")


def test_int8_packed_weights_follow_the_int8_buffers():
    model, other = quantize_model(_model(seed=0)), quantize_model(_model(seed=1))
    ids = _ids(2, 6)
    _steps(model, ids, 2, direct=True)  # packs the first weights
    model.load_state_dict(other.state_dict())
    got, _ = _steps(model, ids, 2, direct=True)
    want, _ = _steps(other, ids, 2, direct=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_int8_bad_uses_raise():
    model = quantize_model(_model())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model)
    with pytest.raises(ValueError, match="`method` must be one of"):
        quantize_model(_model(), method="int4")
    with pytest.raises(ValueError, match="`config.quantization` must be None or a dict with `method`"):
        LSTMLMForCausalLM(make_tiny_config(quantization={"method": "fp4"}))
    with pytest.raises(ValueError, match="ONNX export takes a float model"):
        export_onnx(model, "unused")


INT8_REMOTE_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_lstmlm"] = None  # this machine "never installed" the package
    import torch
    from transformers import AutoModelForCausalLM
    ids = torch.tensor(json.loads(sys.argv[2]))
    results = []
    for folder, kwargs in ((sys.argv[1], {}), (sys.argv[3], {"quantize": "int8"})):  # int8 folder; float, quantized
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs).eval()
        assert type(model.lm_head).__name__ == "Int8Linear", type(model.lm_head)
        results.append(model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None).tolist())
    print(json.dumps(results))
    """
)


def test_int8_folder_loads_as_remote_code_without_the_package(tmp_path):
    _model().save_pretrained(tmp_path / "float")
    model = quantize_model(_model())
    folder = tmp_path / "int8"
    model.save_pretrained(folder)
    prompt = _ids(1, 4)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", INT8_REMOTE_CHILD, str(folder), json.dumps(prompt.tolist()), str(tmp_path / "float")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None).tolist()
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [expected, expected]


# ---------------------------------------------------------------- ONNX


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def exported(request, tmp_path_factory):
    model = _model(**SHAPES[request.param])
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    export_onnx(model, folder)
    return model, OnnxLSTMLM(folder, num_threads=1)


def _left_padded(batch, seq, seed):
    ids = _ids(batch, seq, seed=seed)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, : (row * 2) % seq] = 0
    return ids, mask


@needs_onnx
@pytest.mark.parametrize("batch, seq", [(1, 1), (2, 7), (4, 11)], ids=["1x1", "2x7", "4x11"])
def test_onnx_prefill_step_and_greedy_equal_pytorch(exported, batch, seq):
    model, generator = exported
    ids, mask = _left_padded(batch, seq, seed=seq)
    report = compare_with_model(model, generator, ids, mask, max_new_tokens=15)
    assert report["prefill_logits_max_abs_diff"] < 1e-5
    assert report["prefill_state_max_abs_diff"] < 1e-5
    assert report["step_logits_max_abs_diff"] < 1e-5
    assert report["greedy_ids_equal"], (report["pytorch_ids"], report["onnx_ids"])


@needs_onnx
def test_onnx_greedy_stops_on_eos_like_generate(exported):
    model, generator = exported
    ids = _ids(3, 4, seed=7)
    with torch.no_grad():
        first = model(ids).logits[:, -1].argmax(-1)  # make row 0's first new token the end token
    eos = int(first[0])
    expected = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=1)
    got = generator.greedy_generate(ids.numpy(), max_new_tokens=10, eos_token_id=eos, pad_token_id=1)
    assert got.tolist() == expected.tolist()
    assert got[0, 4] == eos and (got[0, 5:] == 1).all()


@needs_onnx
def test_onnx_prefill_ignores_padding_anywhere(exported):
    model, generator = exported
    ids = _ids(2, 6, seed=9)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    logits, h, c = generator.prefill(ids.numpy(), mask.numpy())
    alone = ids[0, mask[0].bool()][None]  # row 0's real tokens, unpadded
    with torch.no_grad():
        expected = model(alone, use_cache=True)
    np.testing.assert_allclose(logits[0], expected.logits[0, -1].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h[:, 0], torch.stack([expected.cache.get_state(i)[0][0] for i in range(2)]), atol=1e-5)


@needs_onnx
def test_onnx_folder_and_input_errors(tmp_path, exported):
    _, generator = exported
    with pytest.raises(OSError, match="not an ONNX export of this model"):
        OnnxLSTMLM(tmp_path)
    with pytest.raises(ValueError, match="`attention_mask` must have the shape of `input_ids`"):
        generator.prefill(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="`max_new_tokens` must be a positive int"):
        generator.greedy_generate(np.ones((1, 3)), max_new_tokens=0)


# ---------------------------------------------------------------- scripts


def _run_script(name, *args, cwd):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *args],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_quantize_script_smoke(tmp_path):
    out = tmp_path / "int8"
    _run_script("quantize.py", "--smoke", "--output_dir", str(out), cwd=tmp_path)
    report = json.loads((out / "quantization_report.json").read_text())
    assert set(report["int8"]) == {"window_1", "window_32"}
    assert abs(report["relative_change"]["window_1"]["word_perplexity"]) < 0.02
    assert json.loads((out / "quantize_args.json").read_text())["smoke"] is True
    assert isinstance(AutoModelForCausalLM.from_pretrained(out).lm_head, Int8Linear)


@needs_onnx
def test_export_onnx_and_onnx_generate_scripts_smoke(tmp_path):
    out = tmp_path / "onnx"
    _run_script("export_onnx.py", "--smoke", "--output_dir", str(out), cwd=tmp_path)
    assert json.loads((out / "verification.json").read_text())["greedy_ids_equal"] is True
    result = _run_script("onnx_generate.py", "--smoke", "--output_file", str(tmp_path / "gen.json"), cwd=tmp_path)
    assert "greedy ids equal to PyTorch generate(): True" in result.stdout
    assert json.loads((tmp_path / "gen.json").read_text())["pytorch_ids_equal"] is True


def test_cache_public_methods_after_direct_steps():
    model = _model()
    cache = LSTMLMCache(config=model.config)
    with torch.no_grad():
        model(_ids(2, 3), cache=cache, use_cache=True)
        h0 = cache.get_state(0)[0].clone()
        model(_ids(2, 1), cache=cache, use_cache=True)
    assert cache.seen_tokens == cache.get_seq_length() == 4
    assert not torch.equal(cache.get_state(0)[0], h0)
    cache.set_state(0, h0, h0)
    torch.testing.assert_close(cache.get_state(0)[1], h0, rtol=0, atol=0)


@needs_onnx
def test_decode_benchmark_smoke_variants_agree(tmp_path):
    out = tmp_path / "decode.json"
    bench = REPO_ROOT / "benchmarks" / "bench_decode.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--smoke", "--threads", "1", "--batch_sizes", "2", "--output", str(out)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    int8 = {"direct int8", "onnxruntime int8"}  # different logits by design: their ids are not compared
    float32 = {"nn.LSTM step", "direct step, ATen kernels", "direct step", "onnxruntime"}
    assert {row["variant"] for row in rows} == float32 | int8
    assert all(row["same_ids_as_nn_lstm"] for row in rows if row["variant"] not in int8)
    assert all(row["same_ids_as_nn_lstm"] is None for row in rows if row["variant"] in int8)
