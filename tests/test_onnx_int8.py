"""Int8 ONNX folders (`onnx_export.quantize_onnx`, `export_onnx(..., quantize="int8")`): int8 weights, smaller, close to
the float ONNX graphs, scored like the PyTorch model, and the scripts' `--int8` modes.

Tolerance for int8 vs float: 3% of the float logits' range (the smallest max - min over the rows compared). Each int8
operand (a weight, a dynamically quantized activation) is rounded to one of 255 levels over its range, so it carries
an error of at most half a step, 1/254 of its largest magnitude; a product of two such operands is off by at most about
2/254 ~ 0.8% of its scale when the errors line up, and the logits sit behind three quantized stages (two LSTM layers,
then the output layer): 3 x 0.8% ~ 2.4%, rounded up to 3%. Measured on these tiny models: at most 1% (float vs int8
ONNX, prefill and step). The state gets the same 3% of its largest magnitude. A wrong quantization (say, a weight read
in the wrong layout) is off by the order of the whole range.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoTokenizer

from modeling_lstmlm import LSTMLMForCausalLM
from modeling_lstmlm.evaluation import evaluate_text, score_stream
from modeling_lstmlm.onnx_export import (
    OnnxLSTMLM,
    compare_onnx,
    evaluate_text_onnx,
    export_onnx,
    onnx_weight_summary,
    quantize_onnx,
    score_stream_onnx,
)
from modeling_lstmlm.smoke import tiny_model

RELATIVE_TOLERANCE = 0.03
SHAPES = {
    "tied": {},
    "projection": {"embedding_size": 8, "tie_word_embeddings": True},
    "untied": {"tie_word_embeddings": False},
}


def _model(seed=0, **overrides) -> LSTMLMForCausalLM:
    torch.manual_seed(seed)
    return LSTMLMForCausalLM(make_tiny_config(**overrides)).eval()


def _left_padded(batch, seq, seed):
    ids = torch.randint(6, 64, (batch, seq), generator=torch.Generator().manual_seed(seed)).numpy()
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, : (row * 2) % seq] = 0
    return ids, mask


def _op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def folders(request, tmp_path_factory):
    """(model, float folder, int8 folder): the int8 one from `export_onnx(..., quantize="int8")`."""
    model = _model(**SHAPES[request.param])
    root = tmp_path_factory.mktemp(f"int8-{request.param}")
    export_onnx(model, root / "float")
    export_onnx(model, root / "int8", quantize="int8")
    return model, root / "float", root / "int8"


def test_int8_folder_holds_int8_weights_and_is_smaller(folders):
    model, float_dir, int8_dir = folders
    float_sizes, int8_sizes = onnx_weight_summary(float_dir), onnx_weight_summary(int8_dir)
    config = json.loads((int8_dir / "onnx_config.json").read_text())
    assert config["quantization"]["method"] == "int8" and config["quantization"]["per_channel"] is True
    assert "quantization" not in json.loads((float_dir / "onnx_config.json").read_text())
    # The matrices quantized to int8: LSTM, projection, output layer (a tied one is listed under the embedding).
    matrices = [p for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name]
    matrices += [model.lm_head.weight] if model.config.tie_word_embeddings else []
    int8_bytes = sum(p.numel() + p.shape[0] for p in matrices)  # a byte per weight, an int8 zero point per channel
    embedding_bytes = model.model.embed_tokens.weight.numel() + 1  # a byte per entry and one uint8 zero point
    for graph in ("prefill.onnx", "decode_step.onnx"):
        before, after = float_sizes[graph], int8_sizes[graph]
        assert set(before["initializer_bytes"]) == {"float32"}
        assert after["initializer_bytes"]["int8"] == int8_bytes
        assert after["initializer_bytes"]["uint8"] == embedding_bytes
        assert sum(after["initializer_bytes"].values()) < 0.45 * sum(before["initializer_bytes"].values())
        assert after["file_bytes"] < before["file_bytes"]
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= _op_types(int8_dir / "prefill.onnx")
    assert "MatMulInteger" in _op_types(int8_dir / "decode_step.onnx")
    for graph in ("prefill.onnx", "decode_step.onnx"):
        assert not {"LSTM", "Gemm", "MatMul"} & _op_types(int8_dir / graph)  # no float matmul left


@pytest.mark.parametrize("batch, seq", [(1, 1), (2, 7), (4, 11)], ids=["1x1", "2x7", "4x11"])
def test_int8_prefill_step_close_to_float_onnx(folders, batch, seq):
    _, float_dir, int8_dir = folders
    ids, mask = _left_padded(batch, seq, seed=seq)
    float_onnx, int8_onnx = OnnxLSTMLM(float_dir, num_threads=1), OnnxLSTMLM(int8_dir, num_threads=1)
    report = compare_onnx(float_onnx, int8_onnx, ids, mask, max_new_tokens=8)
    tolerance = RELATIVE_TOLERANCE * report["logits_range"]
    assert report["logits_range"] > 0.01  # the logits are not flat, so the tolerance means something
    for key in ("prefill_logits", "step_logits", "step_same_state_logits"):
        assert 0 < report[f"{key}_max_abs_diff"] < tolerance, (key, report[f"{key}_max_abs_diff"], tolerance)
    _, h, c = float_onnx.prefill(ids, mask)
    assert 0 < report["prefill_h_max_abs_diff"] < RELATIVE_TOLERANCE * np.abs(h).max()
    assert 0 < report["prefill_c_max_abs_diff"] < RELATIVE_TOLERANCE * np.abs(c).max()


def test_int8_greedy_generate_runs_and_follows_its_logits(folders):
    _, float_dir, int8_dir = folders
    ids, mask = _left_padded(3, 6, seed=3)
    float_onnx, int8_onnx = OnnxLSTMLM(float_dir, num_threads=1), OnnxLSTMLM(int8_dir, num_threads=1)
    out = int8_onnx.greedy_generate(ids, mask, max_new_tokens=10, eos_token_id=None)
    assert out.shape == (3, 16) and (out[:, :6] == ids).all() and ((0 <= out) & (out < 64)).all()
    logits, h, c = int8_onnx.prefill(ids, mask)
    np.testing.assert_array_equal(out[:, 6], logits.argmax(-1))
    step_logits, _, _ = int8_onnx.step(out[:, 6:7], h, c)
    np.testing.assert_array_equal(out[:, 7], step_logits.argmax(-1))
    # Where the float model's top token leads by more than twice the tolerance, int8 picks it too.
    float_logits, _, _ = float_onnx.prefill(ids, mask)
    ordered = np.sort(float_logits, axis=-1)
    margin = ordered[:, -1] - ordered[:, -2]
    clear = margin > 2 * RELATIVE_TOLERANCE * np.ptp(float_logits, axis=-1)
    np.testing.assert_array_equal(out[clear, 6], float_logits[clear].argmax(-1))


@pytest.mark.parametrize(
    "options, embedding_dtype",
    [({"per_channel": False}, "uint8"), ({"quantize_embedding": False}, "float32"), ({"reduce_range": True}, "uint8")],
    ids=["per-tensor", "float-embedding", "reduce-range"],
)
def test_quantize_options_are_recorded_and_stay_close(tmp_path, options, embedding_dtype):
    model = _model()
    export_onnx(model, tmp_path / "float")
    quantize_onnx(tmp_path / "float", tmp_path / "int8", **options)
    record = json.loads((tmp_path / "int8" / "onnx_config.json").read_text())["quantization"]
    for key, value in options.items():
        assert record[key] == value
    graph = onnx.load(str(tmp_path / "int8" / "decode_step.onnx")).graph
    embedding = [
        t for t in graph.initializer if t.name.startswith("lm.model.embed_tokens.weight") and t.dims == [64, 16]
    ]
    assert [onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in embedding] == [embedding_dtype]
    scales = [t for t in graph.initializer if t.name.endswith("_scale") and "layers.0.weight_ih" in t.name]
    assert [list(t.dims) for t in scales] == ([[64]] if options.get("per_channel", True) else [[]])
    ids, mask = _left_padded(2, 7, seed=1)
    report = compare_onnx(OnnxLSTMLM(tmp_path / "float", 1), OnnxLSTMLM(tmp_path / "int8", 1), ids, mask, 4)
    assert report["prefill_logits_max_abs_diff"] < RELATIVE_TOLERANCE * report["logits_range"]
    assert report["step_logits_max_abs_diff"] < RELATIVE_TOLERANCE * report["logits_range"]


def test_onnx_perplexity_equals_pytorch_and_int8_is_close(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    model = tiny_model(tokenizer, hidden_size=16, num_hidden_layers=2)
    export_onnx(model, tmp_path / "float")
    quantize_onnx(tmp_path / "float", tmp_path / "int8")
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    expected = evaluate_text(model, tokenizer, text, window=1)
    got = evaluate_text_onnx(OnnxLSTMLM(tmp_path / "float", 1), tokenizer, text)
    assert got.num_tokens == expected.num_tokens
    assert got.num_words == expected.num_words == 18  # 13 whitespace-separated words + 5 line ends
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-5)
    int8 = evaluate_text_onnx(OnnxLSTMLM(tmp_path / "int8", 1), tokenizer, text)
    assert int8.num_words == 18 and int8.nll_sum != got.nll_sum
    assert int8.word_perplexity == pytest.approx(got.word_perplexity, rel=0.02)  # the bar


def test_score_stream_onnx_matches_windowed_pytorch_scoring(folders):
    model, float_dir, _ = folders
    stream = torch.randint(6, 64, (40,), generator=torch.Generator().manual_seed(5))
    expected = score_stream(model, stream, window=16)  # the multi-token path, state carried between windows
    got = score_stream_onnx(OnnxLSTMLM(float_dir, num_threads=1), stream)
    assert got.num_tokens == expected.num_tokens == 39
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-5)
    with pytest.raises(ValueError, match="Need at least 2 tokens"):
        score_stream_onnx(OnnxLSTMLM(float_dir, num_threads=1), np.array([3]))


def test_quantize_bad_inputs_raise(folders, tmp_path):
    model, float_dir, int8_dir = folders
    with pytest.raises(ValueError, match="is already quantized \\(int8\\); quantize_onnx takes a float export"):
        quantize_onnx(int8_dir, tmp_path / "twice")
    relabelled = tmp_path / "relabelled"  # int8 graphs whose config was edited to look float
    shutil.copytree(int8_dir, relabelled)
    config = json.loads((relabelled / "onnx_config.json").read_text())
    del config["quantization"]
    (relabelled / "onnx_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="prefill.onnx already holds 8-bit weights"):
        quantize_onnx(relabelled, tmp_path / "twice")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(float_dir, incomplete)
    (incomplete / "decode_step.onnx").unlink()
    with pytest.raises(OSError, match="not an ONNX export of this model \\(missing decode_step.onnx\\)"):
        quantize_onnx(incomplete, tmp_path / "out")
    with pytest.raises(OSError, match="not an ONNX export of this model \\(no such folder\\)"):
        quantize_onnx(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="`dst_dir` must differ from `src_dir`"):
        quantize_onnx(float_dir, float_dir)
    with pytest.raises(ValueError, match="`quantize` must be None or one of \\('int8',\\), got 'int4'"):
        export_onnx(model, tmp_path / "int4", quantize="int4")
    assert not (tmp_path / "out").exists() and not (tmp_path / "int4").exists()


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO_ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_onnx_int8_smoke_then_onnx_generate_on_it(tmp_path):
    out = tmp_path / "int8"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "export_onnx.py"), "--smoke", "--int8", "--output_dir", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert json.loads((out / "export_args.json").read_text())["int8"] is True
    verification = json.loads((out / "verification.json").read_text())
    assert verification["float_onnx_vs_pytorch"]["greedy_ids_equal"] is True
    closeness = verification["int8_vs_float_onnx"]
    assert 0 < closeness["step_logits_max_abs_diff"] < RELATIVE_TOLERANCE * closeness["logits_range"]
    sizes = verification["weights"]
    assert sizes["int8_onnx"]["decode_step.onnx"]["file_bytes"] < sizes["float_onnx"]["decode_step.onnx"]["file_bytes"]
    perplexity = json.loads((out / "perplexity.json").read_text())
    assert perplexity["int8_onnx"]["num_words"] == perplexity["float_onnx"]["num_words"] > 0
    assert abs(perplexity["relative_change"]["word_perplexity"]) < 0.02
    # onnx_generate.py on the int8 folder (its tokenizer travels with it), in-process to save a start-up
    generate = _load_script("onnx_generate.py")
    got = generate.main(["--onnx_dir", str(out), "--prompt", "ROMEO:", "--max_new_tokens", "5", "--num_threads", "1"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = [tokenizer.bos_token_id] + tokenizer("ROMEO:")["input_ids"]
    assert got["quantization"]["method"] == "int8"
    assert got["ids"][0][: len(prompt)] == prompt and len(prompt) < len(got["ids"][0]) <= len(prompt) + 5
    # the same script refuses to quantize its own output again
    export = _load_script("export_onnx.py")
    with pytest.raises(ValueError, match="is already quantized"):
        export.main(["--from_onnx_dir", str(out), "--int8", "--output_dir", str(tmp_path / "again")])
    with pytest.raises(SystemExit):
        export.main(["--from_onnx_dir", str(out), "--output_dir", str(tmp_path / "again")])  # needs --int8
