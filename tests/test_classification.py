"""The classification head (pooling, losses, save/load, backbone reuse, pipeline) and the classification library
(data loading, label maps, metrics, the tiny-shakespeare speaker task)."""

import json

import numpy as np
import pytest
import torch
import transformers.modeling_utils
from conftest import make_tiny_config
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments, pipeline
from transformers.testing_utils import CaptureLogger

from modeling_lstmlm import LSTMLMForCausalLM, LSTMLMForSequenceClassification
from modeling_lstmlm.classification import (
    classification_metrics,
    encode_labels,
    label_maps,
    load_classification_dataset,
    majority_baseline,
    parse_speeches,
    run_classification,
    shakespeare_speakers,
)

PAD = 1
ROWS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def _classifier(**overrides) -> LSTMLMForSequenceClassification:
    torch.manual_seed(0)
    return LSTMLMForSequenceClassification(make_tiny_config(num_labels=3, **overrides)).eval()


def _padded(rows, side):
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, cols], mask[i, cols] = torch.tensor(row), 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------------
# The head


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["attention_mask", "pad_token_id"])
def test_pooling_matches_each_row_alone(side, with_mask):
    model = _classifier()
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([row])).logits for row in ROWS])
        ids, mask = _padded(ROWS, side)
        batched = model(ids, attention_mask=mask if with_mask else None).logits
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)


def test_pooling_reads_the_last_real_token():
    model = _classifier()
    ids, mask = _padded(ROWS, "left")
    with torch.no_grad():
        hidden = model.model(ids, attention_mask=mask).last_hidden_state[:, -1]  # left padding: last column is real
        logits = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, model.score(hidden), rtol=0, atol=1e-6)


def test_single_label_loss_is_cross_entropy():
    model = _classifier()
    ids, mask = _padded(ROWS, "right")
    labels = torch.tensor([2, 0, 1])
    out = model(ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_multi_label_loss_is_binary_cross_entropy():
    model = _classifier(problem_type="multi_label_classification")
    ids, mask = _padded(ROWS, "right")
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    out = model(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels))


def test_regression_loss_is_mse():
    torch.manual_seed(0)
    model = LSTMLMForSequenceClassification(make_tiny_config(num_labels=1)).eval()
    ids, mask = _padded(ROWS, "left")
    labels = torch.tensor([0.5, -1.0, 2.0])
    out = model(ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == "regression"
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels))


def test_loss_trains_the_head_and_the_backbone():
    model = _classifier().train()
    ids, mask = _padded(ROWS, "left")
    model(ids, attention_mask=mask, labels=torch.tensor([2, 0, 1])).loss.backward()
    assert model.score.weight.grad.abs().sum() > 0
    assert model.model.layers[0].weight_hh_l0.grad.abs().sum() > 0
    assert model.model.embed_tokens.weight.grad[PAD].abs().sum() == 0  # padding never entered the recurrence


def test_save_and_load_round_trip(tmp_path):
    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model = _classifier(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_lstmlm.LSTMLMForSequenceClassification"
    )
    assert saved["architectures"] == ["LSTMLMForSequenceClassification"]
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is LSTMLMForSequenceClassification
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.id2label == id2label and loaded.config.label2id == {v: k for k, v in id2label.items()}
    ids, mask = _padded(ROWS, "right")
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(loaded.eval()(ids, attention_mask=mask).logits, expected)


def test_causal_lm_folder_loads_into_the_head_reusing_the_backbone(tmp_path):
    torch.manual_seed(0)
    lm = LSTMLMForCausalLM(make_tiny_config()).eval()
    lm.save_pretrained(tmp_path)
    with CaptureLogger(transformers.modeling_utils.logger) as captured:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            tmp_path, num_labels=2, output_loading_info=True
        )
    assert info["missing_keys"] == {"score.weight", "score.bias"}  # only the new head is initialised
    assert info["unexpected_keys"] == {"lm_head.bias"}  # the LM head is dropped (its weight is the tied embedding)
    assert "LOAD REPORT" in captured.out and "score.weight" in captured.out and "MISSING" in captured.out
    lm_state = lm.model.state_dict()
    for name, tensor in model.model.state_dict().items():
        torch.testing.assert_close(tensor, lm_state[name], rtol=0, atol=0, msg=name)
    assert model.score.weight.shape == (2, 16) and model.score.weight.abs().sum() > 0


def test_text_classification_pipeline(repo_root):
    tokenizer = AutoTokenizer.from_pretrained(repo_root / "tokenizer")
    torch.manual_seed(0)
    id2label = {0: "comedy", 1: "tragedy"}
    config = make_tiny_config(vocab_size=len(tokenizer), num_labels=2, id2label=id2label)
    model = LSTMLMForSequenceClassification(config).eval()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = ["O Romeo, Romeo!", "Now is the winter of our discontent"]
    results = classify(texts, top_k=None)
    for text, result in zip(texts, results, strict=True):
        with torch.no_grad():
            probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        got = {r["label"]: r["score"] for r in result}
        assert set(got) == {"comedy", "tragedy"}
        assert got["comedy"] == pytest.approx(probs[0].item(), abs=1e-6)
        assert got["tragedy"] == pytest.approx(probs[1].item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_exact_values():
    predictions = [0, 0, 1, 2, 2, 2]
    references = [0, 1, 1, 2, 2, 0]
    scores = classification_metrics(predictions, references)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: 0 -> 2*1/(2+1+1) = 0.5; 1 -> 2*1/(2+0+1) = 2/3; 2 -> 2*2/(4+1+0) = 0.8
    assert scores["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_metrics_agree_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is only a cross-check")
    rng = np.random.default_rng(0)
    references = rng.integers(0, 5, size=200)
    predictions = np.where(rng.random(200) < 0.6, references, rng.integers(0, 6, size=200))  # class 5 never true
    scores = classification_metrics(predictions, references)
    assert scores["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(references, predictions))
    assert scores["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(references, predictions, average="macro"))


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        classification_metrics([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [])


def test_majority_baseline():
    result = majority_baseline([2, 1, 1, 2, 0], [1, 2, 2, 0])  # tie 1/2 -> the smaller id
    assert result == {"majority_label": 1, "accuracy": 0.25, "macro_f1": pytest.approx(0.4 / 3)}


# ---------------------------------------------------------------------------------------------------------------------
# Data


def test_csv_with_custom_columns_and_held_out_splits(tmp_path):
    rows = ["review,sentiment"] + [f"text number {i},{'good' if i % 3 else 'bad'}" for i in range(40)]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_classification_dataset(
        train_file=path, text_column="review", label_column="sentiment", held_out_fraction=0.1, seed=0
    )
    assert list(data) == ["train", "validation", "test"]
    assert [len(data[s]) for s in data] == [32, 4, 4]
    assert data["train"].column_names == ["text", "label"]
    texts = [t for s in data for t in data[s]["text"]]
    assert sorted(texts) == sorted(f"text number {i}" for i in range(40))  # every row in exactly one split
    again = load_classification_dataset(train_file=path, text_column="review", label_column="sentiment", seed=0)
    assert again["test"]["text"] == data["test"]["text"]
    label2id, id2label = label_maps(data)
    assert label2id == {"bad": 0, "good": 1} and id2label == {0: "bad", 1: "good"}
    encoded = encode_labels(data, label2id)
    assert encoded["train"]["label"] == [label2id[v] for v in data["train"]["label"]]


def test_jsonl_splits_and_integer_labels(tmp_path):
    for split, n in (("train", 12), ("validation", 3), ("test", 3)):
        lines = [json.dumps({"text": f"{split} {i}", "label": i % 3, "extra": 1}) for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    data = load_classification_dataset(
        train_file=tmp_path / "train.jsonl",
        validation_file=tmp_path / "validation.jsonl",
        test_file=tmp_path / "test.jsonl",
    )
    assert [len(data[s]) for s in data] == [12, 3, 3]
    assert data["test"]["text"] == ["test 0", "test 1", "test 2"]
    assert label_maps(data) == ({"0": 0, "1": 1, "2": 2}, {0: "0", 1: "1", 2: "2"})
    assert encode_labels(data, label_maps(data)[0])["validation"]["label"] == [0, 1, 2]


def test_class_label_feature_keeps_its_names():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    data = Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features)
    label2id, _ = label_maps(data)
    assert label2id == {"neg": 0, "pos": 1}
    assert encode_labels(data, label2id)["label"] == [1, 0]


def test_data_errors(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("sentence,label\nhello,a\nworld,b\n")
    with pytest.raises(ValueError, match=r"no column 'text'; columns: \['sentence', 'label'\]"):
        load_classification_dataset(train_file=path)
    with pytest.raises(ValueError, match="must end in .csv, .json or .jsonl"):
        load_classification_dataset(train_file=tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_classification_dataset(train_file=tmp_path / "missing.csv")
    blank = tmp_path / "blank.csv"  # an empty text cell (row 1) and an empty label cell (row 2) read as None
    blank.write_text("text,label\nhello,a\n,b\nworld,\nagain,a\n")
    with pytest.raises(ValueError, match=r"train split has 1 row\(s\) with no value in column 'text' \(first: row 1 "):
        load_classification_dataset(train_file=blank)
    blank.write_text("text,label\nhello,a\nthere,b\nworld,\nagain,a\n")
    with pytest.raises(ValueError, match=r"train split has 1 row\(s\) with no value in column 'label' \(first: row 2 "):
        load_classification_dataset(train_file=blank)
    with pytest.raises(ValueError, match="exactly one of"):
        load_classification_dataset()
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        label_maps(Dataset.from_dict({"text": ["a"], "label": ["x"]}))
    with pytest.raises(ValueError, match="all strings or all integers"):
        label_maps(Dataset.from_dict({"text": ["a", "b"], "label": [[1], [2]]}))
    with pytest.raises(ValueError, match="Unknown label 'c'"):
        encode_labels(Dataset.from_dict({"text": ["a"], "label": ["c"]}), {"a": 0, "b": 1})


SCRIPT = """\
ROMEO:
But soft, what light
through yonder window breaks?

JULIET:
Ay me!

NURSE:

ROMEO:
She speaks.
"""


def test_parse_speeches():
    speeches = parse_speeches(SCRIPT)
    assert [(s.speaker, s.text, s.start_line, s.end_line) for s in speeches] == [
        ("ROMEO", "But soft, what light\nthrough yonder window breaks?", 0, 3),
        ("JULIET", "Ay me!", 4, 6),
        ("ROMEO", "She speaks.", 9, 11),  # the empty NURSE speech is skipped
    ]
    with pytest.raises(ValueError, match="Line 4 starts a block but is not a speaker line"):
        parse_speeches("ROMEO:\nHi\n\nno speaker here\n")


def _play(path, counts):
    blocks = []
    for i in range(max(counts.values())):
        for speaker, n in counts.items():
            if i < n:
                blocks.append(f"{speaker}:\n{speaker.lower()} line one of speech {i}\nline two of speech {i}\n")
    path.write_text("\n".join(blocks))


def test_speaker_task_splits_by_speech(tmp_path):
    path = tmp_path / "play.txt"
    _play(path, {"A": 10, "B": 10, "C": 5, "D": 2})
    data = shakespeare_speakers(path, top_k=3, fractions=(0.6, 0.2, 0.2), seed=0)
    assert {s: sorted(set(data[s]["label"])) for s in data} == {s: ["A", "B", "C"] for s in data}
    assert [data[s]["label"].count("A") for s in data] == [6, 2, 2]
    assert [data[s]["label"].count("C") for s in data] == [3, 1, 1]
    lines = [set(data[s]["start_line"]) for s in data]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])  # no speech in two splits
    assert all(not text.endswith(":") and "line two" in text for s in data for text in data[s]["text"])
    again = shakespeare_speakers(path, top_k=3, seed=0)
    assert again["test"]["text"] == data["test"]["text"]
    assert shakespeare_speakers(path, top_k=3, seed=1)["test"]["text"] != data["test"]["text"]
    with pytest.raises(ValueError, match="the task needs 4 with at least 3 speeches"):
        shakespeare_speakers(path, top_k=4)


def test_speaker_task_on_the_bundled_play(repo_root):
    data = shakespeare_speakers(repo_root / "data/tinyshakespeare/input.txt", top_k=4, line_range=(36000, 40000))
    assert sorted(set(data["train"]["label"])) == ["GRUMIO", "PETRUCHIO", "PROSPERO", "TRANIO"]
    assert [len(data[s]) for s in data] == [157, 52, 51]
    assert min(min(data[s]["start_line"]) for s in data) >= 36000  # outside an LM pretrained on lines [0, 36000)


@pytest.mark.parametrize("freeze", [False, True], ids=["fine-tune", "frozen-backbone"])
def test_run_classification(repo_root, tmp_path, freeze):
    tokenizer = AutoTokenizer.from_pretrained(repo_root / "tokenizer")
    texts = {"train": 16, "validation": 4, "test": 4}
    data = {
        split: Dataset.from_dict(
            {
                "text": [("Joy!" if i % 2 else "Woe.") * (1 + i % 3) for i in range(n)],
                "label": [i % 2 for i in range(n)],
            }
        )
        for split, n in texts.items()
    }
    torch.manual_seed(0)
    model = LSTMLMForSequenceClassification(make_tiny_config(vocab_size=len(tokenizer), num_labels=2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    results = run_classification(model, tokenizer, DatasetDict(data), args, max_length=8, freeze_backbone=freeze)
    assert set(results) == {"train", "validation", "test", "majority"}
    assert set(results["test"]) >= {"accuracy", "macro_f1", "loss"}
    assert results["majority"]["test"] == majority_baseline(data["train"]["label"], data["test"]["label"])
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {"score.weight", "score.bias"} <= changed
    assert any(name.startswith("model.") for name in changed) is not freeze
