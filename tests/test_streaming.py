"""Streaming `datasets`: `load_dataset(..., streaming=True)` (local `text`/`json` builders, no network) into the same
token files as local text, or straight into training without a token file; exact ids against the in-memory path."""

import json

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments

from modeling_lstmlm import LSTMLMForCausalLM
from modeling_lstmlm.data import (
    BPTTStreams,
    DataSource,
    LMCollator,
    StreamedBPTT,
    load_split_texts,
    load_splits,
    load_streamed_splits,
    tokenize_documents,
)
from modeling_lstmlm.training import DataArguments, LMTrainer, ModelArguments, run_training

TOKENIZER_DIR = REPO_ROOT / "tokenizer"
SHAKESPEARE = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").is_file() or not SHAKESPEARE.is_file():
        pytest.skip("the committed tokenizer/ or data/tinyshakespeare is missing")
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


@pytest.fixture
def text_files(tmp_path):
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("".join(lines[:400]))
    valid.write_text("".join(lines[400:460]))
    return {"train": str(train), "validation": str(valid)}


def test_streamed_text_builder_gives_the_ids_of_the_in_memory_path(tokenizer, tmp_path, offline, text_files):
    source = DataSource(dataset_name="text", data_files=text_files, rows_are_lines=True, streaming=True)
    streamed = load_splits(source, tokenizer, cache_dir=tmp_path / "cache")
    in_memory = load_splits(DataSource(dataset_name="text", data_files=text_files, rows_are_lines=True), tokenizer)
    texts = {name: open(path).read() for name, path in text_files.items()}
    for name in ("train", "validation"):
        expected = tokenize_documents([texts[name]], tokenizer).tolist()
        assert in_memory[name].input_ids.tolist() == expected
        assert isinstance(streamed[name].input_ids, np.memmap)
        assert np.asarray(streamed[name].input_ids).tolist() == expected, name
        assert streamed[name].num_words == in_memory[name].num_words
    again = load_splits(source, tokenizer, cache_dir=tmp_path / "cache")
    assert again["train"].token_file.reused and again["train"].token_file.path == streamed["train"].token_file.path


def test_streamed_json_rows_are_documents(tokenizer, tmp_path, offline):
    rows = [{"text": "First doc.\nTwo lines.\n"}, {"text": "  "}, {"text": None}, {"text": "Second  doc 🙂"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = DataSource(dataset_name="json", data_files=[str(path)], streaming=True, validation_split_percentage=0)
    split = load_splits(source, tokenizer, cache_dir=tmp_path / "cache")["train"]
    expected = tokenize_documents(["First doc.\nTwo lines.\n", "Second  doc 🙂"], tokenizer).tolist()
    assert np.asarray(split.input_ids).tolist() == expected  # blank and null rows skipped, as in load_split_texts
    assert split.token_file.manifest["num_documents"] == 2
    assert load_split_texts(DataSource(dataset_name="json", data_files=[str(path)], validation_split_percentage=0)) == {
        "train": ["First doc.\nTwo lines.\n", "Second  doc 🙂"]
    }


def test_streaming_errors(tmp_path, offline, text_files):
    with pytest.raises(ValueError, match="no length to hold out a percentage"):
        load_streamed_splits(DataSource(dataset_name="text", data_files=[text_files["train"]], streaming=True))
    with pytest.raises(ValueError, match="Line ranges cannot select rows"):
        load_streamed_splits(DataSource(dataset_name="text", data_files=text_files, train_lines="0:10", streaming=True))
    source = DataSource(dataset_name="text", data_files=text_files, text_column="body", streaming=True)
    with pytest.raises(ValueError, match="has no column 'body'"):
        list(next(iter(load_streamed_splits(source)["train"])).pieces())


def test_streamed_windows_are_bptt_streams_of_consecutive_chunks(tokenizer, tmp_path, offline, text_files):
    source = DataSource(dataset_name="text", data_files=text_files, rows_are_lines=True, streaming=True)
    split = load_streamed_splits(source)["train"]
    ids = tokenize_documents([open(text_files["train"]).read()], tokenizer)
    dataset = StreamedBPTT(split, tokenizer, num_streams=3, block_size=5, windows_per_chunk=4)
    items = list(dataset)
    size = 3 * 4 * 5 + 1
    expected, start = [], 0
    while len(ids) - start >= size:
        chunk = BPTTStreams(ids[start : start + size], num_streams=3, block_size=5)
        expected += [chunk[i] for i in range(len(chunk))]
        start += size - 1
    if len(ids) - start >= 3 * 5 + 1:  # a shorter last chunk, while it fills a window of every stream
        tail = BPTTStreams(ids[start:], num_streams=3, block_size=5)
        expected += [tail[i] for i in range(len(tail))]
    assert len(items) == len(expected) > 100
    for got, want in zip(items, expected, strict=True):
        assert got.tokens.tolist() == want.tokens.tolist() and got.window == want.window
    assert [item.window for item in items[:15]] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [0] * 3  # chunks restart
    assert list(dataset)[7].tokens.tolist() == items[7].tokens.tolist()  # iterating again starts over


class StopAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_from_the_stream_continues_the_same_windows(tokenizer, tmp_path, offline, text_files):
    source = DataSource(dataset_name="text", data_files=text_files, rows_are_lines=True, streaming=True)
    split = load_streamed_splits(source)["train"]

    def make(output_dir, callbacks=()):
        torch.manual_seed(0)
        model = LSTMLMForCausalLM(make_tiny_config(vocab_size=len(tokenizer), hidden_dropout=0.2))
        args = TrainingArguments(
            str(output_dir), per_device_train_batch_size=2, max_steps=6, save_strategy="steps", save_steps=3,
            learning_rate=3e-3, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        )  # fmt: skip
        dataset = StreamedBPTT(split, tokenizer, num_streams=2, block_size=8, windows_per_chunk=2)
        return LMTrainer(model=model, args=args, train_dataset=dataset, data_collator=LMCollator(),
                         stateful_bptt=True, callbacks=list(callbacks))  # fmt: skip

    full = make(tmp_path / "full")
    full.train()
    interrupted = make(tmp_path / "resumed", callbacks=[StopAtStep(3)])
    interrupted.train()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
    changed = make(tmp_path / "other")
    assert any(not torch.equal(a, b) for a, b in zip(full.model.parameters(), changed.model.parameters(), strict=True))


def test_run_training_straight_from_the_stream(tokenizer, tmp_path, offline, text_files):
    output = tmp_path / "run"
    data_args = DataArguments(
        dataset_name="text",
        data_files=[f"train={text_files['train']}", f"validation={text_files['validation']}"],
        rows_are_lines=True,
        streaming=True,
        cache_tokens=False,
        block_size=16,
        stateful=True,
        eval_window=64,
        cache_dir=str(tmp_path / "cache"),
    )
    args = TrainingArguments(
        str(output), per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=4, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    results = run_training(ModelArguments(hidden_size=16, num_hidden_layers=1), data_args, args,
                           default_tokenizer=TOKENIZER_DIR)  # fmt: skip
    assert results["train_steps"] == 4 and results["train_tokens"] == 4 * 4 * 16
    assert results["validation_num_words"] > 0
    manifests = [json.loads(path.read_text()) for path in (tmp_path / "cache").glob("tokens-*.json")]
    assert [m["name"] for m in manifests] == ["validation"]  # the train split never went to disk
