"""Smoke runs of scripts/finetune_classification.py and scripts/finetune_chat.py as subprocesses."""

import json
import os
import subprocess
import sys

import torch
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from modeling_lstmlm import LSTMLMForCausalLM
from modeling_lstmlm.sft import number_translation_pairs


def _run(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _tiny_lm(path):
    torch.manual_seed(0)
    LSTMLMForCausalLM(make_tiny_config(vocab_size=8192)).save_pretrained(path)
    return path


def test_finetune_classification_smoke_speaker_task(tmp_path):
    out = tmp_path / "out"
    result = _run("finetune_classification.py", "--smoke", "--output_dir", out)
    assert "majority" in result.stdout and "random_init" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"majority", "random_init"}
    for split in ("validation", "test"):
        assert 0 <= results["random_init"][split]["accuracy"] <= 1
        assert 0 <= results["random_init"][split]["macro_f1"] <= 1
    assert json.loads((out / "args.json").read_text())["smoke"] is True
    model = AutoModelForSequenceClassification.from_pretrained(out / "random_init")
    assert sorted(model.config.id2label.values()) == ["ANTONIO", "PROSPERO", "SEBASTIAN"]
    assert AutoTokenizer.from_pretrained(out / "random_init").pad_token_id == 1


def test_finetune_classification_smoke_csv_from_causal_lm(tmp_path):
    lm = _tiny_lm(tmp_path / "lm")
    rows = ["line,mood"] + [
        f"{'Joy! joy!' if i % 2 else 'Alas and woe.'} {i},{'happy' if i % 2 else 'sad'}" for i in range(60)
    ]
    (tmp_path / "moods.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = _run(
        "finetune_classification.py",
        "--smoke",
        "--model_name_or_path",
        lm,
        "--train_file",
        tmp_path / "moods.csv",
        "--text_column",
        "line",
        "--label_column",
        "mood",
        "--output_dir",
        out,
    )
    # The backbone comes from the LM folder; only the new head is initialised, and the load report says so.
    assert "LOAD REPORT" in result.stderr and "score.weight" in result.stderr and "MISSING" in result.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"majority", "pretrained", "random_init"}
    assert results["pretrained"]["train"]["epoch"] == results["random_init"]["train"]["epoch"] == 1  # same settings
    assert results["majority"]["test"]["majority_label"] in (0, 1)
    model = AutoModelForSequenceClassification.from_pretrained(out / "pretrained")
    assert model.config.id2label == {0: "happy", 1: "sad"}


def test_finetune_chat_smoke_packed(tmp_path):
    out = tmp_path / "chat"
    result = _run("finetune_chat.py", "--smoke", "--packing", "--output_dir", out)
    assert "held-out assistant tokens" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["before"]["tokens"] == results["after"]["tokens"] > 0
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [5, 0] and generation["pad_token_id"] == 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.use_cache is True
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt["input_ids"][0] == 3 and prompt["input_ids"][-2] == 4


def test_finetune_chat_smoke_translation_from_a_built_corpus(tmp_path):
    pairs = number_translation_pairs(range(100))
    with open(tmp_path / "numbers.jsonl", "w", encoding="utf-8") as f:
        for source, target in zip(pairs["source"], pairs["target"], strict=True):
            f.write(json.dumps({"en": source, "fr": target}, ensure_ascii=False) + "\n")
    out = tmp_path / "translate"
    result = _run(
        "finetune_chat.py",
        "--smoke",
        "--task",
        "translation",
        "--train_file",
        tmp_path / "numbers.jsonl",
        "--source_column",
        "en",
        "--target_column",
        "fr",
        "--instruction",
        "English to French:",
        "--model_name_or_path",
        _tiny_lm(tmp_path / "lm"),
        "--output_dir",
        out,
    )
    assert "held-out translations: BLEU" in result.stdout
    results = json.loads((out / "results.json").read_text())
    for key in ("translation_before", "translation_after"):
        assert set(results[key]) == {"bleu", "chrf", "exact_match"}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["source"].startswith("English to French:\n") for s in samples)
    assert {s["reference"] for s in samples} <= set(pairs["target"])
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [5, 0]
