"""The application benchmarks' parts: CV folds, NBSVM features, ULMFiT's schedule pieces, concat pooling, the
target-only translation loss, BLEU scoring, and both benchmark scripts' --smoke runs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from modeling_lstmlm import LSTMLMForCausalLM, LSTMLMForSequenceClassification
from modeling_lstmlm.baselines import NBSVM, cv_fold, majority_accuracy, nb_log_count_ratio, read_label_files
from modeling_lstmlm.translation import DecoderOnlyCollator, encode_decoder_only, score_translations, translate
from modeling_lstmlm.ulmfit import (
    GradualUnfreezingCallback,
    discriminative_optimizer,
    layer_groups,
    remove_contaminated,
    slanted_triangular,
    train_classifier,
)

# ---------------------------------------------------------------------------------------------------------------------
# Folds and baselines


def test_cv_fold_is_index_within_label_file_mod_10(tmp_path):
    (tmp_path / "neg").write_text("".join(f"n{i}\n" for i in range(23)))
    (tmp_path / "pos").write_text("".join(f"p{i}\n" for i in range(21)))
    examples = read_label_files({"neg": tmp_path / "neg", "pos": tmp_path / "pos"})
    train, test = cv_fold(examples, fold=3)
    assert test == [("n3", "neg"), ("n13", "neg"), ("p3", "pos"), ("p13", "pos")]
    assert len(train) == 44 - 4 and not set(train) & set(test)
    all_test = [pair for fold in range(10) for pair in cv_fold(examples, fold)[1]]
    assert sorted(all_test) == sorted((f"n{i}", "neg") for i in range(23)) + sorted((f"p{i}", "pos") for i in range(21))
    _, test2 = cv_fold(examples, fold=2)
    assert [t for t, _ in test2] == ["n2", "n12", "n22", "p2", "p12"]
    with pytest.raises(ValueError, match="fold"):
        cv_fold(examples, fold=10)


def test_read_label_files_errors(tmp_path):
    (tmp_path / "a").write_text("x\n\ny\n")
    (tmp_path / "b").write_text("z\n")
    with pytest.raises(ValueError, match="line 2: an empty example"):
        read_label_files({"a": tmp_path / "a", "b": tmp_path / "b"})
    with pytest.raises(FileNotFoundError, match="missing"):
        read_label_files({"a": tmp_path / "b", "b": tmp_path / "missing"})


def test_nbsvm_log_count_ratio_by_hand():
    pytest.importorskip("sklearn")
    texts = ["good movie", "good good fun", "bad movie"]
    labels = [1, 1, 0]
    model = NBSVM().fit(texts, labels)
    vocab = model.vectorizer.vocabulary_
    assert set(vocab) == {"bad", "fun", "good", "movie", "bad movie", "good fun", "good good", "good movie"}
    # p = 1 + binarized positive counts: bad 1, fun 2, good 3, movie 2, the four bigrams 1, 2, 2, 2 -> |p| = 15
    # q = 1 + binarized negative counts: bad 2, fun 1, good 1, movie 2, bad movie 2, the others 1 -> |q| = 11
    expected = {"good": math.log(11 / 5), "movie": math.log((2 / 15) / (2 / 11)), "bad": math.log((1 / 15) / (2 / 11))}
    for word, value in expected.items():
        assert model.r[vocab[word]] == pytest.approx(value, abs=1e-12)
    # "good good": binarized, so the repeated unigram counts once in that document (good: 2 positive documents)
    dense = np.array([[1, 0, 3], [0, 2, 1], [1, 1, 0]])
    np.testing.assert_allclose(
        nb_log_count_ratio(dense, [1, 0, 1]), np.log((np.array([3, 2, 2]) / 7) / (np.array([1, 2, 2]) / 5))
    )
    # the interpolated weights: (1 - beta) * mean |w| + beta * w, and the model separates its training data
    assert list(model.predict(texts)) == labels
    with pytest.raises(ValueError, match="0/1 labels"):
        nb_log_count_ratio(dense, [1, 1, 1])


def test_majority_accuracy():
    assert majority_accuracy([0, 1, 1], [1, 1, 0, 0]) == 0.5
    assert majority_accuracy([0, 1], [0, 0, 1]) == pytest.approx(2 / 3)  # tie: the smallest label


# ---------------------------------------------------------------------------------------------------------------------
# ULMFiT pieces


def test_contamination_drops_documents_holding_a_test_sentence():
    documents = ["A fine film .  It is GOOD fun .", "nothing here", "it is good   fun . again"]
    kept, report = remove_contaminated(documents, ["it is good fun .", "never seen"])
    assert kept == ["nothing here"]
    assert report == {"documents": 3, "dropped_documents": 2, "test_sentences_found": 1}


def test_layer_groups_lstm_and_gpt2():
    model = LSTMLMForSequenceClassification(make_tiny_config(embedding_size=8, num_labels=2))
    groups = layer_groups(model)
    named = {id(p): n for n, p in model.named_parameters()}
    names = [[named[id(p)] for p in group] for group in groups]
    assert names[0] == ["model.embed_tokens.weight"]
    assert all(n.startswith("model.layers.0.") for n in names[1]) and len(names[1]) == 4
    assert all(n.startswith("model.layers.1.") for n in names[2])
    assert names[3] == ["model.proj.weight", "score.weight", "score.bias"]
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=64, n_embd=8, n_layer=3, n_head=2, n_positions=16))
    assert len(layer_groups(gpt2)) == 5
    optimizer = discriminative_optimizer(groups, lr=1e-2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2 / 2.6**3, 1e-2 / 2.6**2, 1e-2 / 2.6, 1e-2])


def test_slanted_triangular_factors():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = slanted_triangular(optimizer, total_steps=100, cut_frac=0.1, ratio=32)
    factor = schedule.lr_lambdas[0]
    assert factor(0) == pytest.approx(1 / 32)
    assert factor(5) == pytest.approx((1 + 0.5 * 31) / 32)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx((1 + 0.5 * 31) / 32)
    assert factor(100) == pytest.approx(1 / 32)


def _tokenizer():
    return AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")


def test_gradual_unfreezing_keeps_frozen_groups_unchanged(tmp_path):
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = make_tiny_config(vocab_size=len(tokenizer), embedding_size=8, num_labels=2, classifier_pooling="concat")
    model = LSTMLMForSequenceClassification(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = [("a fine film", 1), ("a dull film", 0)] * 8
    # 16 examples, batch 4: 4 steps per epoch; 4 groups unfrozen over 3 epochs = one more group every 4 steps
    result = train_classifier(
        model, tokenizer, data, data, tmp_path, num_epochs=1, unfreeze_epochs=3, batch_size=4, learning_rate=1e-2
    )
    assert result["steps"] == 4 and result["unfreezing"] == [(0, 1)]
    after = dict(model.named_parameters())
    for name, value in before.items():
        changed = not torch.equal(value, after[name].detach())
        assert changed == (name.startswith("score") or name.startswith("model.proj")), name
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again after training
    assert 0 <= result["accuracy"] <= 1


def test_unfreezing_callback_schedule():
    groups = [[torch.nn.Parameter(torch.zeros(1))] for _ in range(3)]
    callback = GradualUnfreezingCallback(groups, unfreeze_every=2)
    for step in range(6):
        callback._set(step)
    assert callback.unfrozen_history == [(0, 1), (2, 2), (4, 3)]


def test_concat_pooling_matches_hand_pooling_under_padding():
    torch.manual_seed(0)
    config = make_tiny_config(embedding_size=8, num_labels=3, classifier_pooling="concat")
    model = LSTMLMForSequenceClassification(config).eval()
    assert model.score.in_features == 24
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    with torch.no_grad():
        alone = [model(torch.tensor([r])).logits[0] for r in rows]
        for side in ("right", "left"):
            ids, mask = [], []
            for r in rows:
                pad = [1] * (5 - len(r))
                ids.append(r + pad if side == "right" else pad + r)
                mask.append([1] * len(r) + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * len(r))
            logits = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
            for i in range(2):
                torch.testing.assert_close(logits[i], alone[i], atol=1e-5, rtol=1e-5)
        hidden = model.model(torch.tensor([rows[1]])).last_hidden_state[0]
        pooled = torch.cat([hidden[-1], hidden.amax(0), hidden.mean(0)])
        torch.testing.assert_close(alone[1], model.score(pooled), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="classifier_pooling"):
        make_tiny_config(classifier_pooling="mean")


# ---------------------------------------------------------------------------------------------------------------------
# Translation


def test_decoder_only_encoding_labels_target_only():
    tokenizer = _tokenizer()
    example = encode_decoder_only(tokenizer, "Hello there", "Hallo da")
    source = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    target = tokenizer("Hallo da", add_special_tokens=False)["input_ids"]
    sep = tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert example["input_ids"] == [0, *source, sep, *target, 0]
    assert example["labels"] == [-100] * (len(source) + 2) + [*target, 0]
    prompt = encode_decoder_only(tokenizer, "Hello there")
    assert prompt["input_ids"] == [0, *source, sep]
    reversed_example = encode_decoder_only(tokenizer, "Hello there", "Hallo da", reverse_source=True)
    assert len(source) > 1 and reversed_example["input_ids"] == [0, *source[::-1], sep, *target, 0]
    assert reversed_example["labels"] == example["labels"]


def test_target_only_loss_equals_cross_entropy_on_target_tokens():
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(vocab_size=len(tokenizer))).eval()
    pairs = [("A man rides a horse.", "Ein Mann reitet."), ("Two dogs.", "Zwei Hunde spielen im Schnee.")]
    batch = DecoderOnlyCollator(tokenizer.pad_token_id)([encode_decoder_only(tokenizer, s, t) for s, t in pairs])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    with torch.no_grad():
        output = model(**batch)
    logits = output.logits[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-5)
    n_target = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for _, t in pairs)
    assert int(keep.sum()) == n_target  # every target token and each <eos>, nothing of the source


def test_translate_decoder_only_batch_equals_one_by_one():
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    # initializer_range=1: random weights whose beams do not collapse to one repeated token
    config = make_tiny_config(vocab_size=len(tokenizer), hidden_size=32, initializer_range=1.0)
    model = LSTMLMForCausalLM(config).eval()
    sources = ["A man rides a horse.", "Two dogs play in the snow near a tree."]
    batched = translate(model, tokenizer, sources, num_beams=2, max_new_tokens=6)
    single = [translate(model, tokenizer, [s], num_beams=2, max_new_tokens=6)[0] for s in sources]
    assert batched == single and batched[0] != batched[1]  # left padding changes nothing
    # reverse_source: the prompts are the reversed encoding, in translation as in training.
    reversed_out = translate(model, tokenizer, sources, num_beams=2, max_new_tokens=6, reverse_source=True)
    for source, hypothesis in zip(sources, reversed_out, strict=True):
        prompt = torch.tensor([encode_decoder_only(tokenizer, source, reverse_source=True)["input_ids"]])
        ids = model.generate(prompt, num_beams=2, max_new_tokens=6, early_stopping=True, do_sample=False)
        assert hypothesis == tokenizer.decode(ids[0, prompt.shape[1] :], skip_special_tokens=True).strip()
    assert reversed_out != batched


def test_bleu_and_chrf_on_tiny_data():
    pytest.importorskip("sacrebleu")
    # 1-4 gram precisions 6/6, 4/5, 3/4, 2/3; brevity penalty exp(1 - 7/6)
    expected = 100 * math.exp(1 - 7 / 6) * (1 * 0.8 * 0.75 * (2 / 3)) ** 0.25
    scores = score_translations(["the cat sat on the mat"], ["the cat sat on the red mat"])
    assert scores["bleu"] == pytest.approx(expected, abs=1e-6)
    same = score_translations(["Ein Hund läuft im Schnee."], ["Ein Hund läuft im Schnee."])
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    cased = score_translations(["the cat sat on the mat"], ["The cat sat on the mat"])
    assert cased["bleu"] < 100 and "case:mixed" in cased["bleu_signature"]
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        score_translations(["a", "b"], ["a"])


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark scripts


def _bench(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_bench_classification_smoke(tmp_path):
    pytest.importorskip("sklearn")
    result = _bench("bench_classification.py", "--smoke", "--dataset", "subj", "--folds", "4", "--output_dir", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    for system in ("lstm", "gpt2", "nbsvm", "tfidf_lr", "majority"):
        assert set(results[system]) == {"4"} and 0 <= results[system]["4"] <= 1
    assert results["majority"]["4"] == 0.5  # 4 of 40 lines per label in the test fold
    assert "subj, folds 4" in result.stdout
    for system in ("lstm", "gpt2"):
        fold = results["details"][system]["folds"]["4"]
        assert fold["contamination"]["dropped_documents"] == 0
        assert fold["classifier"]["unfreezing"][0] == [0, 1]
    lstm_params = results["details"]["lstm"]["general"]["num_parameters"]
    gpt2_params = results["details"]["gpt2"]["general"]["num_parameters"]
    assert abs(gpt2_params - lstm_params) / lstm_params < 0.2


def test_bench_translation_smoke(tmp_path):
    pytest.importorskip("sacrebleu")
    options = ("--no-lstm_reverse_source", "--lstm_dropout", "0.1")
    _bench("bench_translation.py", "--smoke", *options, "--output_dir", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["args"]["lstm_reverse_source"] is False and results["args"]["lstm_dropout"] == 0.1
    for system in ("lstm", "gpt2", "encoder_decoder"):
        assert 0 <= results[system]["bleu"] <= 100 and 0 <= results[system]["chrf"] <= 100
        assert len((tmp_path / f"{system}.hyp.txt").read_text(encoding="utf-8").splitlines()) == 6
    assert results["test_sentences"] == 6


# ---------------------------------------------------------------------------------------------------------------------
# The fine-tuning scripts on label files and on aligned text files


def _script(script, *args):
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


def test_label_files_dataset_fold_and_validation(tmp_path):
    from modeling_lstmlm.classification import label_files_dataset

    (tmp_path / "neg").write_text("".join(f"bad {i}\n" for i in range(30)))
    (tmp_path / "pos").write_text("".join(f"good {i}\n" for i in range(30)))
    data = label_files_dataset({"neg": tmp_path / "neg", "pos": tmp_path / "pos"}, fold=7)
    assert data["test"]["text"] == ["bad 7", "bad 17", "bad 27", "good 7", "good 17", "good 27"]
    assert data["test"]["label"] == ["neg"] * 3 + ["pos"] * 3
    assert len(data["train"]) + len(data["validation"]) == 54 and len(data["validation"]) == 6
    assert not set(data["train"]["text"]) & set(data["test"]["text"])


def test_finetune_classification_smoke_label_files_fold(tmp_path):
    (tmp_path / "neg").write_text("".join(f"a dull , tired film {i} .\n" for i in range(40)))
    (tmp_path / "pos").write_text("".join(f"a warm , funny film {i} .\n" for i in range(40)))
    out = tmp_path / "out"
    _script(
        "finetune_classification.py",
        "--smoke",
        "--label_files",
        f"neg={tmp_path / 'neg'}",
        f"pos={tmp_path / 'pos'}",
        "--fold",
        "3",
        "--output_dir",
        out,
    )
    results = json.loads((out / "results.json").read_text())
    assert results["majority"]["test"]["accuracy"] == 0.5  # fold 3: 4 lines of each label
    model = AutoTokenizer.from_pretrained(out / "random_init")
    assert model.pad_token_id == 1
    config = json.loads((out / "random_init" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}


def test_finetune_chat_smoke_translation_from_parallel_files(tmp_path):
    from modeling_lstmlm.sft import english_number, french_number

    (tmp_path / "train.en").write_text("".join(english_number(n) + "\n" for n in range(60)), encoding="utf-8")
    (tmp_path / "train.fr").write_text("".join(french_number(n) + "\n" for n in range(60)), encoding="utf-8")
    out = tmp_path / "translate"
    result = _script(
        "finetune_chat.py",
        "--smoke",
        "--task",
        "translation",
        "--parallel_files",
        tmp_path / "train.en",
        tmp_path / "train.fr",
        "--output_dir",
        out,
    )
    assert "held-out translations: BLEU" in result.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["reference"] for s in samples} <= {french_number(n) for n in range(60)}
