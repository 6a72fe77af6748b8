"""The packed decoding kernels (`modeling_lstmlm/kernels_lstmlm.py`): equal to ATen's step within float32 rounding,
rebuilt when the weights change, bypassed wherever only the plain path is safe.

Tolerance: each packed kernel sums the same products as ATen's `lstm_cell` / `F.linear` in another order (one
`[W_ih | W_hh]` product instead of two, another BLAS). For the output layer `conftest.matmul_atol` bounds the
difference (Higham's bound). For the LSTM step, h and c must agree within 1e-5 absolute, rtol 0: float32 rounding of
these sums is ~1e-7 to 1e-6 (a wrong gate order or bias is off by 1e-2 or more).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import matmul_atol
from torch import nn

from modeling_lstmlm import kernels_lstmlm as K

FORCED = [k for k in K.KERNELS if k in K.available_kernels()]


def _lstm(input_size=24, hidden=16, seed=0) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(input_size, hidden, batch_first=True).eval()


def _weights(layer):
    return [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]


def _state(batch, layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, layer.input_size, generator=g)
    h = torch.randn(batch, layer.hidden_size, generator=g) * 0.5
    c = torch.randn(batch, layer.hidden_size, generator=g)
    return x, h, c


def _step_atol(layer, x, h) -> float:
    return 1e-5


def test_aten_is_always_available():
    assert K.available_kernels()[0] == "aten"
    assert set(K.available_kernels()) <= set(K.KERNELS)


@pytest.mark.parametrize("batch", [1, 8, 16], ids=["batch1", "batch8", "batch16"])
@pytest.mark.parametrize("kernel", FORCED)
def test_each_kernel_step_equals_torch_lstm_cell(kernel, batch):
    layer = _lstm(40, 32)
    layer.decode_kernel = kernel
    x, h, c = _state(batch, layer)
    with torch.no_grad():
        want = torch.lstm_cell(x, (h, c), *_weights(layer))
        got = K.lstm_step(layer, x, (h, c), _weights(layer))
    assert layer.decode_kernel_choice[0] == kernel
    if kernel == "aten":  # None: the caller runs its plain step
        assert got is None
        return
    atol = _step_atol(layer, x, h)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=atol)


@pytest.mark.parametrize("batch", [1, 8, 16], ids=["batch1", "batch8", "batch16"])
@pytest.mark.parametrize("kernel", FORCED)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_each_kernel_linear_equals_f_linear(kernel, batch, bias):
    torch.manual_seed(0)
    head = nn.Linear(32, 200, bias=bias).eval()
    head.decode_kernel = kernel
    x = torch.randn(batch, 1, 32)
    with torch.no_grad():
        got = K.linear(head, x)
    want = F.linear(x, head.weight, head.bias)
    if kernel == "aten":  # None: the caller runs F.linear
        assert got is None
        return
    assert got.shape == want.shape == (batch, 1, 200)
    torch.testing.assert_close(got, want, rtol=0, atol=matmul_atol(x, head.weight, head.bias) + 1e-7)


@pytest.mark.parametrize("kernel", [k for k in FORCED if k != "aten"])
def test_packed_copies_follow_in_place_updates_and_new_tensors(kernel):
    layer = _lstm()
    layer.decode_kernel = kernel
    x, h, c = _state(2, layer)

    def check():
        with torch.no_grad():
            got = K.lstm_step(layer, x, (h, c), _weights(layer))
            want = torch.lstm_cell(x, (h, c), *_weights(layer))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=_step_atol(layer, x, h))
        return got[0]

    first = check()
    with torch.no_grad():
        layer.weight_hh_l0.mul_(-1.5)  # in place: same storage, new version
    second = check()
    assert (second - first).abs().max() > 1e-3
    layer.bias_ih_l0 = nn.Parameter(torch.full_like(layer.bias_ih_l0, 0.3))  # a new tensor
    third = check()
    assert (third - second).abs().max() > 1e-3
    layer.load_state_dict(_lstm(seed=5).state_dict())  # copy_ into the parameters
    fourth = check()
    assert (fourth - third).abs().max() > 1e-3
    # An optimizer step in training mode, then decoding again.
    layer.train()
    out, _ = layer(torch.randn(2, 3, layer.input_size))
    out.sum().backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()
    layer.eval()
    fifth = check()
    assert (fifth - fourth).abs().max() > 1e-3


def test_the_plain_path_is_kept_where_a_packed_copy_is_not_safe():
    layer = _lstm()
    layer.decode_kernel = "onednn"
    x, h, c = _state(2, layer)
    with torch.no_grad():
        assert K.lstm_step(layer, x, (h, c), _weights(layer)) is not None
    # autograd on
    assert K.lstm_step(layer, x, (h, c), _weights(layer)) is None
    with torch.no_grad():
        layer.train()
        assert K.lstm_step(layer, x, (h, c), _weights(layer)) is None  # training (weight dropout lives there)
        layer.eval()
        handle = layer.register_forward_pre_hook(lambda module, args: None)
        assert K.lstm_step(layer, x, (h, c), _weights(layer)) is None  # hooks (accelerate offload, user hooks)
        handle.remove()
        layer._hf_hook = object()
        assert K.lstm_step(layer, x, (h, c), _weights(layer)) is None
        del layer._hf_hook
        assert K.lstm_step(layer, x.double(), (h.double(), c.double()), _weights(layer)) is None  # not float32
        bf16 = [w.bfloat16() for w in _weights(layer)]
        assert K.lstm_step(layer, x, (h, c), bf16) is None
        meta = [torch.empty_like(w, device="meta") for w in _weights(layer)]
        assert K.lstm_step(layer, x, (h, c), meta) is None

        class Scale(nn.Module):
            def forward(self, w):
                return 2 * w

        torch.nn.utils.parametrize.register_parametrization(layer, "weight_hh_l0", Scale())
        assert K.lstm_step(layer, x, (h, c), _weights(layer)) is None  # parametrized (PEFT target_parameters)


@pytest.mark.skipif(len(FORCED) < 2, reason="no packed kernel on this machine")
def test_auto_runs_aten_for_one_row_where_aten_measured_faster(monkeypatch):
    """ "auto" keeps the kernel that wins over batch 1 and 8 together; where ATen measured faster at batch 1, one-row
    calls take the plain ATen path (no packed kernel call, no second copy), several rows the packed kernel."""
    other = FORCED[1]

    def fake_times(candidates, make_args, batch_sizes=(1, 8), **_):  # ATen fastest for one row, `other` for 8
        return {
            k: {1: {"aten": 1.0, other: 1.2}.get(k, 2.0), 8: {"aten": 10.0, other: 1.0}.get(k, 5.0)} for k in candidates
        }

    monkeypatch.setattr(K, "_time_candidates", fake_times)
    monkeypatch.setattr(K, "_CHOICES", {})
    calls = []  # (kind, rows) of each packed-kernel call (a oneDNN step calls its oneDNN linear too)
    for kind, kernels in (("step", K._STEP_KERNELS), ("linear", K._LINEAR_KERNELS)):
        original = kernels[other].__call__
        monkeypatch.setattr(
            kernels[other],
            "__call__",
            lambda self, x, *a, f=original, kind=kind: calls.append((kind, x.shape[0])) or f(self, x, *a),
        )
    layer = _lstm(128, 128)  # 528 KB of weights: measured
    layer.decode_kernel = "auto"
    torch.manual_seed(0)
    head = K.DecodingLinear(128, 1024).eval()
    with torch.no_grad():
        for batch in (1, 8, 1):
            x, h, c = _state(batch, layer)
            got = K.lstm_step(layer, x, (h, c), _weights(layer))
            got_head = K.linear(head, x)
            if batch == 1:  # None: the caller runs its plain (ATen) step
                assert got is None and got_head is None
            else:
                want = torch.lstm_cell(x, (h, c), *_weights(layer))
                for g, w in zip(got, want, strict=True):
                    torch.testing.assert_close(g, w, rtol=0, atol=_step_atol(layer, x, h))
                torch.testing.assert_close(got_head, F.linear(x, head.weight, head.bias), rtol=0, atol=1e-4)
    assert {kind for kind, _ in calls} == {"step", "linear"} and {rows for _, rows in calls} == {8}  # batch 8 only
    for module in (layer, head):
        name, reason = module.decode_kernel_choice
        assert name == other and reason.endswith("one-row calls run aten (faster at batch 1)")
    layer.decode_kernel = other  # a forced kernel runs for one row too
    x, h, c = _state(1, layer)
    with torch.no_grad():
        calls.clear()
        assert K.lstm_step(layer, x, (h, c), _weights(layer)) is not None
    assert ("step", 1) in calls


def test_auto_measures_and_records_the_choice_and_small_weights_keep_aten():
    small = _lstm(16, 16)
    small.decode_kernel = "auto"  # opt-in (the default is "aten")
    x, h, c = _state(1, small)
    with torch.no_grad():
        K.lstm_step(small, x, (h, c), _weights(small))
    assert small.decode_kernel_choice[0] == "aten"
    assert "not worth a packed copy" in small.decode_kernel_choice[1]
    big = _lstm(128, 128)  # 528 KB of weights: measured
    big.decode_kernel = "auto"
    x, h, c = _state(1, big)
    with torch.no_grad():
        want = torch.lstm_cell(x, (h, c), *_weights(big))
        got = K.lstm_step(big, x, (h, c), _weights(big)) or want
    name, reason = big.decode_kernel_choice
    assert name in K.available_kernels()
    assert "fastest on" in reason and all(f"{k} " in reason for k in K.available_kernels())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=_step_atol(big, x, h))


def test_unknown_or_unavailable_kernel_is_a_clear_error(monkeypatch):
    layer = _lstm()
    x, h, c = _state(1, layer)
    layer.decode_kernel = "fastest"
    with torch.no_grad(), pytest.raises(ValueError, match="`decode_kernel` must be 'auto' or one of"):
        K.lstm_step(layer, x, (h, c), _weights(layer))
    monkeypatch.setattr(K, "_onnxruntime_modules", lambda: None)  # as where onnxruntime is not installed
    assert "onnxruntime" not in K.available_kernels()
    layer.decode_kernel = "onnxruntime"
    with torch.no_grad(), pytest.raises(ValueError, match="not available here"):
        K.lstm_step(layer, x, (h, c), _weights(layer))


def test_decoding_linear_is_an_nn_linear_in_training_and_copies_after_use():
    import copy
    import io

    torch.manual_seed(0)
    head = K.DecodingLinear(300, 500)
    plain = nn.Linear(300, 500)
    plain.load_state_dict(head.state_dict())
    assert isinstance(head, nn.Linear) and list(head.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, 300)
    head(x).sum().backward()  # training, autograd: F.linear
    plain(x).sum().backward()
    torch.testing.assert_close(head.weight.grad, plain.weight.grad, rtol=0, atol=0)
    head.eval()
    for kernel in FORCED:
        head.decode_kernel = kernel
        with torch.no_grad():
            got = head(x)
        torch.testing.assert_close(got, plain(x).detach(), rtol=0, atol=matmul_atol(x, head.weight, head.bias) + 1e-7)
    clone = copy.deepcopy(head)  # holds no session or packed copy: builds its own
    buffer = io.BytesIO()
    torch.save(head, buffer)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), head(x), rtol=0, atol=1e-6)
    assert len(buffer.getvalue()) > 0


def test_tracing_keeps_the_plain_path():
    # ONNX export and torch.jit.trace record the computation: it must be ATen's, whatever the kernel.
    layer = _lstm()
    layer.decode_kernel = "onednn"
    head = K.DecodingLinear(16, 300).eval()
    head.decode_kernel = "onednn"
    layer.requires_grad_(False)  # traced as constants
    head.requires_grad_(False)
    seen = []

    def step(x, h, c):
        seen.append(K.lstm_step(layer, x, (h, c), _weights(layer)))
        seen.append(K.linear(head, h))
        return torch.lstm_cell(x, (h, c), *_weights(layer))[0]

    with torch.no_grad():
        torch.jit.trace(step, _state(1, layer), check_trace=False)
    assert seen == [None, None]


# ---------------------------------------------------------------- inside the model: the layers' step and the head


def _lm(seed=0):
    from conftest import make_tiny_config

    from modeling_lstmlm import LSTMLMForCausalLM

    torch.manual_seed(seed)
    config = make_tiny_config(vocab_size=97, hidden_size=48, embedding_size=32, initializer_range=1.0)
    model = LSTMLMForCausalLM(config).eval()
    with torch.no_grad():  # weights whose greedy output does not collapse to one token
        for param in model.parameters():
            param.mul_(2.0)
    return model


@pytest.mark.parametrize("batch", [1, 8, 16], ids=["batch1", "batch8", "batch16"])
@pytest.mark.parametrize("kernel", [k for k in FORCED if k != "aten"])
def test_generate_with_each_kernel_equals_the_aten_step(kernel, batch):
    model = _lm()
    prompt = torch.randint(2, 97, (batch, 5), generator=torch.Generator().manual_seed(batch))
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, output_scores=True)
    K.set_decode_kernel(model, "aten")
    want = model.generate(prompt, return_dict_in_generate=True, **kwargs)
    K.set_decode_kernel(model, kernel)
    got = model.generate(prompt, return_dict_in_generate=True, **kwargs)
    choices = K.decode_kernel_choices(model)
    assert {name for name, (k, _) in choices.items() if k == kernel} == {"model.layers.0", "model.layers.1", "lm_head"}
    new = want.sequences[:, 5:]
    assert len(set(new.flatten().tolist())) > 1  # the ids vary: the comparison can fail
    assert got.sequences.tolist() == want.sequences.tolist()
    for g, w in zip(got.scores, want.scores, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)  # logits of ~10: float32 rounding through 2 layers


def test_a_hooked_or_training_model_never_builds_a_packed_copy():
    model = _lm()
    K.set_decode_kernel(model, "onednn")
    handles = [layer.register_forward_pre_hook(lambda module, args: None) for layer in model.model.layers]
    handles.append(model.lm_head.register_forward_pre_hook(lambda module, args: None))
    prompt = torch.tensor([[5, 6, 7]])
    model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert K.decode_kernel_choices(model) == {}  # never consulted: the plain path ran
    for handle in handles:
        handle.remove()
    model.train()
    model(prompt, labels=prompt).loss.backward()
    assert K.decode_kernel_choices(model) == {}
    model.eval()
    model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert set(K.decode_kernel_choices(model)) == {"model.layers.0", "model.layers.1", "lm_head"}


def test_decoding_follows_an_optimizer_step_with_packed_kernels():
    model = _lm()
    K.set_decode_kernel(model, "onednn")
    prompt = torch.tensor([[5, 6, 7, 8]])
    before = model.generate(
        prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, output_scores=True, return_dict_in_generate=True
    )
    model.train()
    torch.optim.SGD(model.parameters(), lr=1.0).zero_grad()
    model(prompt, labels=prompt).loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.eval()
    after = model.generate(
        prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, output_scores=True, return_dict_in_generate=True
    )
    K.set_decode_kernel(model, "aten")
    want = model.generate(
        prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, output_scores=True, return_dict_in_generate=True
    )
    assert (after.scores[1] - before.scores[1]).abs().max() > 1e-3
    for g, w in zip(after.scores, want.scores, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kernel", [k for k in FORCED if k != "aten"])
def test_packed_copies_follow_a_fused_optimizer_step_without_a_mode_switch(kernel):
    """`AdamW(fused=True)` (the Trainer's default) writes the weights without bumping `_version`: the optimizer-step
    count in the staleness key catches it, even with the module left in eval mode throughout."""
    layer = K.DecodingLinear(32, 8192).eval()
    layer.decode_kernel = kernel
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = layer(x)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    version = layer.weight._version
    F.linear(x, layer.weight, layer.bias).square().sum().backward()
    optimizer.step()
    assert layer.weight._version == version  # the blind spot this guards against
    with torch.no_grad():
        after = layer(x)
        want = F.linear(x, layer.weight, layer.bias)
    assert layer.decode_kernel_choice[0] == kernel
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, want, rtol=0, atol=matmul_atol(x, layer.weight))


def test_a_write_through_data_is_seen_after_forget_packed():
    layer = K.DecodingLinear(32, 8192).eval()
    layer.decode_kernel = FORCED[-1]
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        layer(x)
        layer.weight.data.mul_(-2.0)  # `.data` bypasses `_version`: documented, and `forget_packed` is the remedy
        K.forget_packed(layer)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-4)


def test_choosing_a_kernel_leaves_the_global_rng_alone():
    layer = K.DecodingLinear(32, 8192).eval()
    layer.decode_kernel = "auto"
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    with torch.no_grad():
        layer(torch.randn(1, 32, generator=torch.Generator().manual_seed(0)))  # measures the kernels here
    assert "fastest" in layer.decode_kernel_choice[1] or layer.decode_kernel_choice[0] == "aten"
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
