"""Sequence classification on top of the LSTM backbone: data, label maps, metrics and the fine-tuning run.

- `load_classification_dataset`: a CSV / JSON(L) file or a Hub dataset with a text and a label column, as a
  `DatasetDict` with `train`, `validation` and `test` (a held-out part of `train` is carved off, deterministically,
  for each split the source lacks).
- `label_maps` / `encode_labels`: string or integer labels -> `label2id` / `id2label` for the config, and ids.
- `classification_metrics`: accuracy and macro-F1 (per-class F1 averaged over the classes present in the references
  or the predictions, as scikit-learn's `f1_score(average="macro")`).
- `shakespeare_speakers`: a real task that needs no download. In tiny-shakespeare every speech is a line `NAME:`
  followed by its lines up to a blank line; the task is to tell who speaks from the speech alone. The `top_k` most
  frequent speakers of a line range are kept, and whole speeches (never single lines) are split into train /
  validation / test, per speaker, with a seeded shuffle.
- `run_classification`: tokenize, fine-tune with the stock `Trainer`, and evaluate on validation and test next to
  the majority-class baseline.

Example:

```python
>>> from modeling_lstmlm.classification import shakespeare_speakers
>>> splits = shakespeare_speakers("data/tinyshakespeare/input.txt", top_k=4, line_range=(36000, 40000))
>>> sorted(set(splits["train"]["label"]))
['GRUMIO', 'PETRUCHIO', 'PROSPERO', 'TRANIO']
```
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import DataCollatorWithPadding, EvalPrediction, PreTrainedModel, Trainer, TrainingArguments
from transformers.utils import logging

from ._extras import require

_datasets = require("datasets", "apps", "Sequence-classification fine-tuning (modeling_lstmlm.classification)")
ClassLabel, Dataset, DatasetDict = _datasets.ClassLabel, _datasets.Dataset, _datasets.DatasetDict
Value, load_dataset = _datasets.Value, _datasets.load_dataset
arrow_compute = require("pyarrow.compute", "apps", "Sequence-classification fine-tuning")  # installed with datasets

logger = logging.get_logger(__name__)

SPLITS = ("train", "validation", "test")
_FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json"}


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_classification_dataset(
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    held_out_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetDict:
    """Load a text-classification dataset as `train` / `validation` / `test`, keeping only `text` and `label`.

    Give either `train_file` (CSV, JSON or JSONL, by extension; optionally `validation_file` and `test_file`) or
    `dataset_name` (a Hub dataset or a local dataset folder, read with `datasets.load_dataset`). Whatever split is
    missing is carved off `train`: `held_out_fraction` of it, shuffled with `seed`, first for `test`, then for
    `validation`. The columns are renamed to `text` and `label`.

    Raises:
        ValueError: neither or both sources given, an unknown file extension, a missing column (the message lists the
            columns found), a row with no text or no label (an empty CSV cell, a JSON null), an empty split, or
            `held_out_fraction` outside (0, 0.5].
        OSError: a file that does not exist.
    """
    if (train_file is None) == (dataset_name is None):
        raise ValueError("Give exactly one of `train_file` (CSV/JSON/JSONL) or `dataset_name` (a Hub dataset)")
    if not 0 < held_out_fraction <= 0.5:
        raise ValueError(f"`held_out_fraction` must be in (0, 0.5], got {held_out_fraction!r}")
    if train_file is not None:
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        files = {split: Path(path) for split, path in files.items() if path is not None}
        suffixes = {path.suffix.lower() for path in files.values()}
        unknown = [str(path) for path in files.values() if path.suffix.lower() not in _FILE_FORMATS]
        if unknown:
            raise ValueError(f"Data files must end in .csv, .json or .jsonl, got {', '.join(unknown)}")
        if len({_FILE_FORMATS[suffix] for suffix in suffixes}) != 1:
            raise ValueError(f"All data files must have the same format, got {sorted(suffixes)}")
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(f"Data file not found: {path}")
        raw = load_dataset(_FILE_FORMATS[suffixes.pop()], data_files={k: str(v) for k, v in files.items()})
    else:
        raw = load_dataset(dataset_name, dataset_config_name)
    if "train" not in raw:
        raise ValueError(f"The dataset has no `train` split (splits: {sorted(raw)})")

    splits = {}
    for split in SPLITS:
        if split not in raw:
            continue
        columns = raw[split].column_names
        missing = [name for name in (text_column, label_column) if name not in columns]
        if missing:
            raise ValueError(f"The {split} split has no column {', '.join(map(repr, missing))}; columns: {columns}")
        data = raw[split].select_columns([text_column, label_column])
        if text_column != "text":
            data = data.rename_column(text_column, "text")
        if label_column != "label":
            data = data.rename_column(label_column, "label")
        if len(data) == 0:
            raise ValueError(f"The {split} split is empty")
        arrow = data.with_format("arrow")
        for name, column in ((text_column, "text"), (label_column, "label")):
            values = arrow[column]  # Arrow's null count: no Python copy of the column
            if values.null_count:
                first = arrow_compute.index(arrow_compute.is_null(values), True).as_py()
                raise ValueError(
                    f"The {split} split has {values.null_count} row(s) with no value in column {name!r} (first: row "
                    f"{first} of the split, 0-based, header not counted); fill or remove them"
                )
        splits[split] = data
    for split in ("test", "validation"):
        if split not in splits:
            parts = splits["train"].train_test_split(test_size=held_out_fraction, seed=seed, shuffle=True)
            if len(parts["train"]) == 0:
                raise ValueError(f"The train split is too small to hold out a {split} split")
            splits["train"], splits[split] = parts["train"], parts["test"]
            logger.info(f"Held out {len(splits[split])} training examples as the {split} split")
    return DatasetDict({split: splits[split] for split in SPLITS})


def label_files_dataset(
    files: dict[str, str | os.PathLike],
    fold: int | None = None,
    num_folds: int = 10,
    held_out_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetDict:
    """`train` / `validation` / `test` from one plain-text file per label, one example a line (MR's
    `rt-polarity.{pos,neg}`, SUBJ's `{quote,plot}.tok.gt9.5000`). With `fold`, test is that cross-validation fold
    (the lines whose 0-based index within their file is congruent to `fold` mod `num_folds`, see
    `baselines.cv_fold`); otherwise `held_out_fraction` of the lines is held out for test. Validation is always
    `held_out_fraction` of what remains for training, shuffled with `seed`. Labels are the `files` keys.

    Raises:
        OSError: a missing file. ValueError: fewer than two labels, an empty line, a bad `fold`.
    """
    from .baselines import cv_fold, read_label_files

    examples = read_label_files(files)
    if fold is not None:
        train, test = cv_fold(examples, fold, num_folds)
        pairs = {"train": train, "test": test}
    else:
        pairs = {"train": [(text, label) for label, lines in examples.items() for text in lines]}
    splits = {
        name: Dataset.from_dict({"text": [t for t, _ in part], "label": [y for _, y in part]})
        for name, part in pairs.items()
    }
    for split in ("test", "validation"):
        if split not in splits:
            parts = splits["train"].train_test_split(test_size=held_out_fraction, seed=seed, shuffle=True)
            splits["train"], splits[split] = parts["train"], parts["test"]
    return DatasetDict({split: splits[split] for split in SPLITS})


def label_maps(dataset: DatasetDict | Dataset) -> tuple[dict[str, int], dict[int, str]]:
    """`(label2id, id2label)` for the `label` column of `dataset` (every split of a `DatasetDict`).

    A `ClassLabel` column keeps its names and ids. Otherwise the distinct values are sorted (strings alphabetically,
    integers numerically) and numbered from 0; integer labels `0..n-1` therefore keep their values.

    Raises:
        ValueError: fewer than two distinct labels, or labels that are neither all strings nor all integers.
    """
    parts = list(dataset.values()) if isinstance(dataset, DatasetDict) else [dataset]
    feature = parts[0].features["label"]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    else:
        values = [value for part in parts for value in part["label"]]
        if not all(isinstance(value, (str, int, np.integer)) and not isinstance(value, bool) for value in values):
            kinds = sorted({type(value).__name__ for value in values})
            raise ValueError(f"Labels must be all strings or all integers, got {kinds}")
        values = set(values)
        if all(isinstance(value, str) for value in values):
            names = sorted(values)
        elif all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
            names = [str(value) for value in sorted(int(value) for value in values)]
        else:
            kinds = sorted({type(value).__name__ for value in values})
            raise ValueError(f"Labels must be all strings or all integers, got {kinds}")
    if len(names) < 2:
        raise ValueError(f"A classification task needs at least 2 distinct labels, got {names}")
    label2id = {name: i for i, name in enumerate(names)}
    return label2id, dict(enumerate(names))


def encode_labels(dataset: DatasetDict | Dataset, label2id: dict[str, int]) -> DatasetDict | Dataset:
    """Replace the `label` column by integer ids from `label2id` (keys are label names, integers as strings).

    Raises:
        ValueError: a label that `label2id` does not know (the message names it).
    """

    def encode(batch):
        ids = []
        for value in batch["label"]:
            key = value if isinstance(value, str) else str(int(value))
            if key not in label2id:
                raise ValueError(f"Unknown label {value!r}; known labels: {sorted(label2id)}")
            ids.append(label2id[key])
        return {"label": ids}

    def one(part: Dataset) -> Dataset:
        if isinstance(part.features["label"], ClassLabel):
            return part  # already ids, and `label_maps` kept its names
        features = part.features.copy()
        features["label"] = Value("int64")  # without it, ids written into a string column stay strings
        return part.map(encode, batched=True, features=features, desc="Encoding labels")

    if isinstance(dataset, DatasetDict):
        return DatasetDict({split: one(part) for split, part in dataset.items()})
    return one(dataset)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def classification_metrics(
    predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """Accuracy and macro-F1 of integer class predictions.

    Macro-F1 is the unweighted mean of each class's F1 over the classes that occur in `references` or `predictions`
    (a class never predicted scores 0), which is scikit-learn's `f1_score(average="macro")`.

    Raises:
        ValueError: the two have different lengths, or are empty.
    """
    predictions, references = np.asarray(predictions).ravel(), np.asarray(references).ravel()
    if predictions.shape != references.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("Cannot score an empty set of predictions")
    f1s = []
    for label in np.union1d(predictions, references):
        tp = np.sum((predictions == label) & (references == label))
        fp = np.sum((predictions == label) & (references != label))
        fn = np.sum((predictions != label) & (references == label))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(f1s))}


def compute_classification_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for the `Trainer`: argmax of the logits -> `classification_metrics`."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return classification_metrics(np.argmax(logits, axis=-1), eval_prediction.label_ids)


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> dict[str, float]:
    """Scores of always predicting the most frequent training label (ties: the smallest id) on `eval_labels`."""
    counts = Counter(int(label) for label in train_labels)
    if not counts:
        raise ValueError("The majority baseline needs at least one training label")
    majority = min(counts, key=lambda label: (-counts[label], label))
    return {"majority_label": majority, **classification_metrics([majority] * len(eval_labels), eval_labels)}


# ---------------------------------------------------------------------------------------------------------------------
# The tiny-shakespeare speaker task


@dataclass(frozen=True)
class Speech:
    """One speech: who speaks, the text (its lines joined by newlines), and its lines `[start_line, end_line)`, where
    `start_line` is the `NAME:` line (0-based line numbers of the file)."""

    speaker: str
    text: str
    start_line: int
    end_line: int


def parse_speeches(text: str) -> list[Speech]:
    """Split a play script in the tiny-shakespeare layout into speeches.

    Blocks are separated by blank lines; each block starts with a speaker line `NAME:` followed by the lines of the
    speech. A speaker line with no line after it (an empty speech) is skipped.

    Raises:
        ValueError: a block whose first line is not a speaker line (the message gives its 1-based line number).
    """
    lines = text.split("\n")
    speeches = []
    start = None
    for number, line in enumerate([*lines, ""]):
        if line.strip() and start is None:
            start = number
        elif not line.strip() and start is not None:
            header = lines[start].strip()
            if not header.endswith(":") or len(header) == 1:
                raise ValueError(f"Line {start + 1} starts a block but is not a speaker line 'NAME:': {header!r}")
            if number - start > 1:
                speech = "\n".join(lines[start + 1 : number])
                speeches.append(Speech(header[:-1].strip(), speech, start, number))
            start = None
    return speeches


def shakespeare_speakers(
    path: str | os.PathLike,
    top_k: int = 4,
    line_range: tuple[int, int | None] = (0, None),
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> DatasetDict:
    """The "who is speaking" task: speeches of the `top_k` most frequent speakers, split by speech.

    Only speeches lying wholly in lines `[line_range[0], line_range[1])` are used (`None` = to the end of the file),
    so a language model pretrained on other lines of the file has never seen them. Speakers are ranked by their
    number of speeches there (ties by name). Each speaker's speeches are shuffled with `seed` and cut by
    `fractions` (train, validation, test), so every split holds every speaker in about the same proportion and the
    lines of one speech never end up in two splits.

    Returns:
        `DatasetDict` with `train`, `validation`, `test`; columns `text` (the speech, without its `NAME:` line),
        `label` (the speaker's name) and `start_line`.

    Raises:
        OSError: the file cannot be read. ValueError: bad `top_k`, `fractions` or `line_range`, or fewer than
        `top_k` speakers with enough speeches to fill every split.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 2:
        raise ValueError(f"`top_k` must be an int >= 2, got {top_k!r}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"`fractions` must be three positive numbers summing to 1, got {fractions!r}")
    start, end = line_range
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"`line_range` must be (start, end) with 0 <= start < end, got {line_range!r}")
    text = Path(path).read_text(encoding="utf-8")
    speeches = [s for s in parse_speeches(text) if s.start_line >= start and (end is None or s.end_line <= end)]
    counts = Counter(s.speaker for s in speeches)
    speakers = sorted(counts, key=lambda name: (-counts[name], name))[:top_k]
    if len(speakers) < top_k or counts[speakers[-1]] < 3:
        raise ValueError(
            f"Lines {line_range} hold only {len(speakers)} speakers; the task needs {top_k} with at least 3 speeches "
            f"each (found {dict(counts.most_common(top_k))})"
        )

    rows = {split: [] for split in SPLITS}
    rng = random.Random(seed)
    for speaker in speakers:
        own = [s for s in speeches if s.speaker == speaker]
        rng.shuffle(own)
        n_train = max(1, round(fractions[0] * len(own)))
        n_valid = max(1, round(fractions[1] * len(own)))
        n_train = min(n_train, len(own) - 2)
        parts = {"train": own[:n_train], "validation": own[n_train : n_train + n_valid]}
        parts["test"] = own[n_train + n_valid :]
        for split, part in parts.items():
            rows[split].extend(part)
    result = {}
    for split in SPLITS:
        part = sorted(rows[split], key=lambda s: s.start_line)
        result[split] = Dataset.from_dict(
            {
                "text": [s.text for s in part],
                "label": [s.speaker for s in part],
                "start_line": [s.start_line for s in part],
            }
        )
    return DatasetDict(result)


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning


def tokenize_for_classification(dataset: DatasetDict, tokenizer, max_length: int | None = None) -> DatasetDict:
    """Tokenize the `text` column (truncating to `max_length` tokens when given; the ends of speeches are cut) and
    keep `input_ids`, `attention_mask` and `label`."""

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=max_length is not None, max_length=max_length)

    keep = {"input_ids", "attention_mask", "label"}
    return DatasetDict(
        {
            split: part.map(tokenize, batched=True, desc=f"Tokenizing {split}").remove_columns(
                [c for c in part.column_names if c not in keep]
            )
            for split, part in dataset.items()
        }
    )


def run_classification(
    model: PreTrainedModel,
    tokenizer,
    dataset: DatasetDict,
    training_args: TrainingArguments,
    max_length: int | None = None,
    freeze_backbone: bool = False,
) -> dict:
    """Fine-tune `model` on `dataset["train"]` with the stock `Trainer`, then score validation and test.

    `dataset` has integer labels (see `encode_labels`); the batches are padded on the tokenizer's padding side and
    the head pools each row's last real token from the attention mask. With `freeze_backbone` only the head
    (`model.score`) is trained: a linear probe of the backbone's features. Returns a dict with `validation` and `test`
    (accuracy, macro-F1, loss), the `majority` baseline on both, and the train metrics under `train`; the fine-tuned
    model is left in `model` (save it with `model.save_pretrained`).
    """
    tokenized = tokenize_for_classification(dataset, tokenizer, max_length)
    if freeze_backbone:
        model.model.requires_grad_(False)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    train_output = trainer.train()
    results = {"train": dict(train_output.metrics)}
    for split in ("validation", "test"):
        metrics = trainer.evaluate(tokenized[split], metric_key_prefix=split)
        results[split] = {key.removeprefix(f"{split}_"): value for key, value in metrics.items()}
    results["majority"] = {
        split: majority_baseline(dataset["train"]["label"], dataset[split]["label"]) for split in ("validation", "test")
    }
    return results
