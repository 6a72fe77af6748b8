"""Cross-validation folds of the sentence-classification benchmarks (MR, SUBJ) and the linear baselines beside them.

- `read_label_files`: one text file per label, one example a line (the layout of MR's `rt-polarity.pos/.neg` and
  SUBJ's `quote/plot.tok.gt9.5000`).
- `cv_fold`: fold `k` of `num_folds` = the lines whose 0-based index within their label file is congruent to `k`
  modulo `num_folds`; the other lines are the training set. Anyone can rebuild the folds from the files.
- `nb_log_count_ratio` / `NBSVM`: NBSVM-bi of Wang & Manning (2012): binarized word uni+bigram counts `f`, the
  naive-Bayes log-count ratio `r = log((p / |p|_1) / (q / |q|_1))` with `p = alpha + sum of f over positive
  examples`, `q` the same over negative ones, the features `r * f`, an L2-regularised squared-hinge linear SVM
  (liblinear, `C = 1`), and the paper's interpolation `w' = (1 - beta) * mean(|w|) + beta * w` with `beta = 0.25`.
- `tfidf_lr`: TF-IDF of word 1-2 grams + logistic regression; `majority_accuracy`: the most frequent training label.

scikit-learn is imported only when a baseline runs (`pip install lstmlm[apps]`).

Example:

```python
>>> from modeling_lstmlm.baselines import cv_fold
>>> train, test = cv_fold({"neg": ["a", "b", "c"], "pos": ["d", "e"]}, fold=1, num_folds=2)
>>> test
[('b', 'neg'), ('e', 'pos')]
```
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

TOKEN_PATTERN = r"(?u)\S+"  # the benchmark files are tokenized upstream: a token is what lies between spaces


def read_label_files(files: Mapping[str, str | os.PathLike]) -> dict[str, list[str]]:
    """`{label: [line, ...]}` from `{label: path}`: every line of each file is one example of that label (trailing
    whitespace stripped; the files are read as UTF-8, and bytes that are not UTF-8 are replaced).

    Raises:
        ValueError: fewer than two labels, or an empty line (the message names the file and line number).
        OSError: a file that cannot be read.
    """
    if len(files) < 2:
        raise ValueError(f"Give one file per label, at least two labels; got {dict(files)}")
    examples = {}
    for label, path in files.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Label file not found: {path}")
        lines = path.read_text(encoding="utf-8", errors="replace").rstrip("\n").split("\n")
        lines = [line.rstrip() for line in lines]
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise ValueError(f"{path}, line {number}: an empty example")
        examples[label] = lines
    return examples


def cv_fold(
    examples: Mapping[str, Sequence[str]], fold: int, num_folds: int = 10
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The training and test sets of fold `fold`: `(train, test)`, each a list of `(text, label)` in label order (as
    `examples` lists the labels), then line order. Test = the lines whose 0-based index within their label's list is
    congruent to `fold` modulo `num_folds`.

    Raises:
        ValueError: `fold` outside `[0, num_folds)`, or `num_folds < 2`.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"`num_folds` must be an int >= 2, got {num_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"`fold` must be an int in [0, {num_folds}), got {fold!r}")
    train, test = [], []
    for label, lines in examples.items():
        for index, text in enumerate(lines):
            (test if index % num_folds == fold else train).append((text, label))
    return train, test


def majority_accuracy(train_labels: Sequence, test_labels: Sequence) -> float:
    """Accuracy on `test_labels` of always predicting the most frequent training label (ties: the smallest)."""
    counts = Counter(train_labels)
    if not counts or not len(test_labels):
        raise ValueError("The majority baseline needs training and test labels")
    majority = min(counts, key=lambda label: (-counts[label], str(label)))
    return float(np.mean([label == majority for label in test_labels]))


def nb_log_count_ratio(features, labels: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    """Wang & Manning's log-count ratio `r` (one value per feature column) of binarized `features`
    (`(n_examples, n_features)`, dense or scipy sparse) for 0/1 `labels` (1 = the positive class):
    `p = alpha + sum_{y=1} f`, `q = alpha + sum_{y=0} f`, `r = log((p / |p|_1) / (q / |q|_1))`.

    Raises:
        ValueError: labels other than 0 and 1, a class with no example, or `alpha <= 0`.
    """
    labels = np.asarray(labels)
    if not set(np.unique(labels).tolist()) == {0, 1}:
        raise ValueError(f"NBSVM needs 0/1 labels with both classes present, got {sorted(set(labels.tolist()))}")
    if alpha <= 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    binary = (features > 0).astype(np.float64)
    p = alpha + np.asarray(binary[labels == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(binary[labels == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


class NBSVM:
    """NBSVM-bi (Wang & Manning 2012) for two classes: binarized word 1-2 gram features scaled by the log-count
    ratio, a liblinear L2-regularised squared-hinge SVM with cost `C`, and the interpolation of its weights with
    their mean magnitude (`beta`). `fit(texts, labels)` with 0/1 labels, then `predict(texts)`.
    """

    def __init__(self, C: float = 1.0, beta: float = 0.25, alpha: float = 1.0, ngram_range=(1, 2)):
        self.C, self.beta, self.alpha, self.ngram_range = C, beta, alpha, ngram_range

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> NBSVM:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.svm import LinearSVC

        self.vectorizer = CountVectorizer(ngram_range=self.ngram_range, binary=True, token_pattern=TOKEN_PATTERN)
        features = self.vectorizer.fit_transform(texts)
        self.r = nb_log_count_ratio(features, labels, self.alpha)
        svm = LinearSVC(C=self.C, loss="squared_hinge", penalty="l2", dual=True, max_iter=10000)
        svm.fit(features.multiply(self.r).tocsr(), np.asarray(labels))
        w = svm.coef_.ravel()
        self.weights = (1 - self.beta) * np.abs(w).mean() + self.beta * w  # the paper's w' (mean(|w|) = |w|_1 / |V|)
        self.bias = float(svm.intercept_[0])
        return self

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        features = self.vectorizer.transform(texts).multiply(self.r).tocsr()
        return features @ self.weights + self.bias

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return (self.decision_function(texts) > 0).astype(int)


def nbsvm_accuracy(train: Sequence[tuple[str, int]], test: Sequence[tuple[str, int]], **kwargs) -> float:
    """Test accuracy of `NBSVM(**kwargs)` trained on `train` (`(text, 0/1 label)` pairs)."""
    model = NBSVM(**kwargs).fit([t for t, _ in train], [y for _, y in train])
    return float(np.mean(model.predict([t for t, _ in test]) == np.asarray([y for _, y in test])))


def tfidf_lr_accuracy(train: Sequence[tuple[str, int]], test: Sequence[tuple[str, int]], C: float = 1.0) -> float:
    """Test accuracy of TF-IDF (word 1-2 grams, sublinear tf) + scikit-learn's logistic regression (L2, `C`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=TOKEN_PATTERN)
    features = vectorizer.fit_transform([t for t, _ in train])
    model = LogisticRegression(C=C, max_iter=2000).fit(features, [y for _, y in train])
    predictions = model.predict(vectorizer.transform([t for t, _ in test]))
    return float(np.mean(predictions == np.asarray([y for _, y in test])))


__all__ = [
    "NBSVM",
    "cv_fold",
    "majority_accuracy",
    "nb_log_count_ratio",
    "nbsvm_accuracy",
    "read_label_files",
    "tfidf_lr_accuracy",
]
