"""The model inside the wrappers the ecosystem puts around it: accelerate's big-model loading (CPU and disk offload)
and PEFT LoRA adapters (on the LSTM weights, the output layer and the embedding)."""

import pytest
import torch
from conftest import make_lively_model, random_ids
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from modeling_lstmlm import LSTMLMForCausalLM
from modeling_lstmlm.kernels_lstmlm import DecodingLinear
from modeling_lstmlm.modeling_lstmlm import LSTMLMLayer

peft = pytest.importorskip("peft", reason="PEFT tests need the [peft] extra")


# ---------------------------------------------------------------- accelerate


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_disk_offloaded_layer_generates_the_plain_models_ids(tmp_path, tied):
    model = make_lively_model(tie_word_embeddings=tied, embedding_size=8)
    model.save_pretrained(tmp_path / "model")
    prompt = random_ids(2, 4)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert len(set(expected[0, 4:].tolist())) > 2  # the comparison is not vacuous: the output varies
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.proj": "disk",
        "lm_head": "cpu",
    }
    offloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    assert offloaded.model.layers[1].weight_hh_l0.device.type == "meta"  # on disk until its module is called
    assert offloaded.generate(prompt, max_new_tokens=8, do_sample=False).tolist() == expected.tolist()
    with torch.no_grad():
        torch.testing.assert_close(offloaded(prompt).logits, model(prompt).logits, rtol=0, atol=1e-6)


def test_disk_offloaded_int8_layer_generates_the_plain_int8_models_ids(tmp_path):
    """An int8 folder with one int8 LSTM layer and the int8 output layer on disk: the int8 step reads its `Int8Linear`
    children's buffers inside the layer's own (hooked) call, so accelerate has loaded them by then."""
    from modeling_lstmlm.quantization_lstmlm import quantize_int8

    model = quantize_int8(make_lively_model(embedding_size=8))
    model.save_pretrained(tmp_path / "int8")
    prompt = random_ids(2, 4)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert len(set(expected[0, 4:].tolist())) > 2
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.proj": "cpu"}
    offloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "int8",
        device_map={**device_map, "lm_head": "disk"},
        offload_folder=tmp_path / "offload",
        offload_buffers=True,  # int8 weights are buffers, which accelerate keeps in memory unless asked
    ).eval()
    assert offloaded.model.layers[0].hh.weight_int8.device.type == "meta"  # on disk until its module is called
    assert offloaded.generate(prompt, max_new_tokens=8, do_sample=False).tolist() == expected.tolist()
    with torch.no_grad():
        torch.testing.assert_close(offloaded(prompt).logits, model(prompt).logits, rtol=0, atol=1e-5)


def test_device_map_auto_with_max_memory_splits_at_layers_and_generates_the_same(tmp_path):
    model = make_lively_model(embedding_size=8)
    model.save_pretrained(tmp_path / "model")
    prompt = random_ids(2, 4)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    auto = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": 12_000},  # bytes: room for part of the model, the rest goes to disk
        offload_folder=tmp_path / "offload",
        low_cpu_mem_usage=True,
    ).eval()
    placements = set(auto.hf_device_map.values())
    assert {"cpu", "disk"} <= placements, auto.hf_device_map
    assert all(not name.startswith("model.layers.0.") for name in auto.hf_device_map)  # a layer is never split
    assert auto.generate(prompt, max_new_tokens=8, do_sample=False).tolist() == expected.tolist()


# ---------------------------------------------------------------- PEFT LoRA

LORA_TARGETS = dict(target_modules=["lm_head", "embed_tokens"], target_parameters=["weight_ih_l0", "weight_hh_l0"])


def _lora(model, **overrides):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **{**LORA_TARGETS, **overrides})
    return get_peft_model(model, config)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=8, seq=8):
        self.rows = random_ids(n, seq, seed=3)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


@pytest.mark.parametrize("weight_dropout", [0.0, 0.3], ids=["no-weight-dropout", "weight-dropout"])
def test_lora_on_lstm_weights_head_and_embedding_trains_generates_saves_and_merges(tmp_path, weight_dropout):
    from peft import PeftModel

    base = make_lively_model(weight_dropout=weight_dropout, embedding_row_dropout=0.1)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = _lora(base)
    wrapped = [name for name, _ in model.named_modules() if name.endswith(("layers.0", "layers.1"))]
    assert wrapped and all("LSTMLMLayer" not in type(model.get_submodule(n)).__name__ for n in wrapped)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora" in n for n in lora_before)
    args = TrainingArguments(
        output_dir=str(tmp_path / "train"),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=0.05,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=_Tokens()).train()
    for name, param in model.named_parameters():
        if name in lora_before:
            assert not torch.equal(param, lora_before[name]), name  # every adapter trained (LSTM ones included)
        else:
            assert torch.equal(param, base_state[name.replace("base_model.model.", "").replace(".base_layer", "")])
    model.eval()
    ids = random_ids(2, 6, seed=5)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    generated = model.generate(input_ids=ids[:, :3], max_new_tokens=6, do_sample=False)
    assert generated.shape == (2, 9)

    model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    fresh = LSTMLMForCausalLM(base.config)
    fresh.load_state_dict(base_state)
    with torch.no_grad():
        plain = fresh.eval()(ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes the model
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, rtol=0, atol=1e-5)
    assert reloaded.generate(input_ids=ids[:, :3], max_new_tokens=6, do_sample=False).tolist() == generated.tolist()
    merged = reloaded.merge_and_unload()
    assert all(type(layer) is LSTMLMLayer for layer in merged.model.layers)
    # The output layer is the model's own `DecodingLinear` (an nn.Linear) again, not a PEFT wrapper.
    assert type(merged.lm_head) is DecodingLinear and type(merged.model.embed_tokens) is torch.nn.Embedding
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, rtol=0, atol=1e-5)
