"""Text in, token ids out: the data layer of training and evaluation.

Text comes from local UTF-8 files or from a dataset on the Hub (`datasets`). Each split is tokenized once and cached
on disk (keyed by the text's sha256 and the tokenizer's), then served in one of two shapes:

- `TokenBlocks`: the token stream cut into non-overlapping blocks of `block_size` inputs (plus one target), for the
  Trainer's shuffled sampler (the usual "group texts" recipe);
- `BPTTStreams`: the token stream cut into contiguous streams, one per batch row, read window after window in order,
  so that consecutive batches continue each other and the LSTM state can be carried (stateful truncated BPTT).

Every document is `<bos> + tokens(text)`, so the first real token is predicted too and documents are separated by the
bos/eos token. Both datasets yield `TokenWindow`s of `block_size + 1` tokens; `LMCollator` turns them into
`input_ids`, `labels` (= `input_ids`, the transformers convention) and `shift_labels` (the true next tokens, which
the loss uses, so that no target is lost at a block boundary).

Example:

```python
>>> from transformers import AutoTokenizer
>>> from modeling_lstmlm.data import BPTTStreams, LMCollator, read_text, select_lines, tokenize_text
>>> tokenizer = AutoTokenizer.from_pretrained("tokenizer")
>>> text = select_lines(read_text("data/tinyshakespeare/input.txt"), 0, 36000)
>>> ids = tokenize_text(text, tokenizer, cache_dir="runs/cache")
>>> streams = BPTTStreams(ids, num_streams=20, block_size=35)
>>> batch = LMCollator()([streams[i] for i in range(20)])  # window 0 of every stream
```
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers.utils import logging

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Reading text


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file.

    Raises:
        OSError: the file is missing or unreadable (`FileNotFoundError` names the path).
        ValueError: the file is empty or not valid UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Text file not found: {path}")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"Text file {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"Text file {path} is not valid UTF-8 (byte {error.start}: {error.reason})") from error


def parse_line_range(spec: str) -> tuple[int, int]:
    """Parse `"start:end"` (end exclusive; either side may be empty) into `(start, end)`; `end = -1` means the end."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"A line range must look like 'start:end' (e.g. '0:36000'), got {spec!r}")
    left, right = spec.split(":")
    try:
        start = int(left) if left.strip() else 0
        end = int(right) if right.strip() else -1
    except ValueError as error:
        raise ValueError(f"A line range must look like 'start:end' with integers, got {spec!r}") from error
    if start < 0 or (end != -1 and end <= start):
        raise ValueError(f"A line range needs 0 <= start < end, got {spec!r}")
    return start, end


def split_lines(text: str) -> list[str]:
    """The lines of `text`, each with its `\\n` (the last may lack it); only `\\n` ends a line, as in a file read."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return lines


def select_lines(text: str, start: int, end: int = -1) -> str:
    """Lines `[start, end)` of `text` (each keeps its newline), a contiguous slice; `end = -1` means to the end.

    Example: the tinyshakespeare benchmark split is lines [0, 36000) train, [36000, 38000) valid, [38000, 40000) test.
    """
    lines = split_lines(text)
    stop = len(lines) if end == -1 else end
    if start < 0 or stop <= start or stop > len(lines):
        raise ValueError(f"Line range [{start}, {end}) is outside the text, which has {len(lines)} lines")
    return "".join(lines[start:stop])


def count_words(text: str) -> int:
    """Words as pytorch/examples word_language_model counts them: whitespace-separated tokens plus one per line end.

    A last line without a trailing newline still counts its line end (the example adds `<eos>` to every line).
    """
    line_ends = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return len(text.split()) + line_ends


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizing, cached


def tokenizer_fingerprint(tokenizer) -> str:
    """A sha256 of everything that decides the ids: the backend tokenizer (vocab, merges, special tokens) and bos."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{state}\nbos={tokenizer.bos_token_id}".encode()).hexdigest()


def _bos_id(tokenizer) -> int:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError("The tokenizer has neither a bos nor an eos token to start and separate documents")
    return bos


def tokenize_documents(
    texts: Sequence[str],
    tokenizer,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
) -> torch.LongTensor:
    """Token ids of `texts` as one stream: `<bos> + tokens(text)` for each text, concatenated.

    With `cache_dir`, the ids are stored as a `.npy` file keyed by the texts' (or `cache_key`'s) sha256 and the
    tokenizer's fingerprint, and read back on the next call instead of tokenizing again.
    """
    if not texts:
        raise ValueError("No text to tokenize")
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256()
        digest.update(tokenizer_fingerprint(tokenizer).encode())
        if cache_key is not None:
            digest.update(cache_key.encode())
        else:
            for text in texts:
                digest.update(hashlib.sha256(text.encode("utf-8")).digest())
        path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:40]}.npy"
        if path.exists():
            logger.info(f"Reading cached token ids from {path}")
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
    bos = _bos_id(tokenizer)
    pieces = []
    for text in texts:
        pieces.append(np.array([bos], dtype=np.int64))
        pieces.append(np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64))
    ids = np.concatenate(pieces)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
        # Write then rename, so that concurrent processes (DDP ranks) never read a half-written file.
        tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, ids.astype(dtype), allow_pickle=False)
        os.replace(tmp, path)
    return torch.from_numpy(ids)


def tokenize_text(text: str, tokenizer, cache_dir: str | os.PathLike | None = None) -> torch.LongTensor:
    """Token ids of one document, `<bos> + tokens(text)`, cached under `cache_dir` when given."""
    if not text.strip():
        raise ValueError("The text is empty")
    return tokenize_documents([text], tokenizer, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Splits


@dataclass
class TextSplit:
    """One split of a corpus: its token stream, and its word count (for word-level perplexity).

    Args:
        name (`str`): "train", "validation" or "test".
        input_ids (`torch.LongTensor` of shape `(num_tokens,)`): `<bos> + tokens(doc)` for each document.
        num_words (`int`): words of the text, counted with `count_words`.
    """

    name: str
    input_ids: torch.LongTensor
    num_words: int

    @property
    def num_predicted(self) -> int:
        """Tokens predicted when the stream is scored from its first token: all but the first."""
        return int(self.input_ids.numel()) - 1


@dataclass
class DataSource:
    """Where the text of each split comes from (see `load_splits`).

    Args:
        train_files (`list[str]`, *optional*): local UTF-8 text files; each file is one document.
        validation_file, test_file (`str`, *optional*): held-out files.
        train_lines, validation_lines, test_lines (`str`, *optional*): `"start:end"` line ranges. With a single train
            file and no validation/test file, they cut that file into contiguous splits (e.g. `"0:36000"`,
            `"36000:38000"`, `"38000:40000"`); with a separate file they select lines of that file.
        dataset_name, dataset_config_name (`str`, *optional*): a dataset on the Hub (or a local dataset folder).
        text_column (`str`): the column holding the text.
        train_split, validation_split, test_split (`str`): split names of the dataset.
        rows_are_lines (`bool`): the dataset's rows are the lines of one text (WikiText); otherwise each row is a
            document.
        validation_split_percentage (`float`): without any validation text, the last part of the train text (in
            lines, or rows) is held out for validation.
    """

    train_files: list[str] | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_lines: str | None = None
    validation_lines: str | None = None
    test_lines: str | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    text_column: str = "text"
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    rows_are_lines: bool = False
    validation_split_percentage: float = 5.0


def _slice(text: str, spec: str | None) -> str:
    if spec is None:
        return text
    start, end = parse_line_range(spec)
    return select_lines(text, start, end)


def load_split_texts(source: DataSource) -> dict[str, list[str]]:
    """The documents of each split (`train`, and `validation`/`test` when available), as lists of strings."""
    if (source.train_files is None) == (source.dataset_name is None):
        raise ValueError("Give exactly one of `train_files` (local text files) or `dataset_name` (a Hub dataset)")
    if not 0 <= source.validation_split_percentage < 100:
        raise ValueError(f"`validation_split_percentage` must be in [0, 100), got {source.validation_split_percentage}")
    splits: dict[str, list[str]] = {}
    if source.train_files is not None:
        if not source.train_files:
            raise ValueError("`train_files` is empty")
        texts = [read_text(path) for path in source.train_files]
        one_file = len(texts) == 1
        if source.train_lines is not None:
            if not one_file:
                raise ValueError("`train_lines` needs exactly one train file")
            splits["train"] = [_slice(texts[0], source.train_lines)]
        else:
            splits["train"] = texts
        for name, file, lines in (
            ("validation", source.validation_file, source.validation_lines),
            ("test", source.test_file, source.test_lines),
        ):
            if file is not None:
                splits[name] = [_slice(read_text(file), lines)]
            elif lines is not None:
                if not one_file:
                    raise ValueError(f"`{name}_lines` without a `{name}_file` needs exactly one train file")
                splits[name] = [_slice(texts[0], lines)]
    else:
        splits = _load_hub_splits(source)

    if "validation" not in splits and source.validation_split_percentage > 0:
        train = splits["train"]
        if len(train) == 1:  # one text: hold out its last lines
            lines = split_lines(train[0])
            held = max(1, int(len(lines) * source.validation_split_percentage / 100))
            if held >= len(lines):
                raise ValueError(f"The train text has {len(lines)} lines, too few to hold out a validation part")
            splits["train"], splits["validation"] = ["".join(lines[:-held])], ["".join(lines[-held:])]
        else:  # several documents: hold out the last ones
            held = max(1, int(len(train) * source.validation_split_percentage / 100))
            if held >= len(train):
                raise ValueError(f"The train split has {len(train)} documents, too few to hold out a validation part")
            splits["train"], splits["validation"] = train[:-held], train[-held:]
    for name, docs in splits.items():
        if not any(doc.strip() for doc in docs):
            raise ValueError(f"The {name} split is empty")
    return splits


def _load_hub_splits(source: DataSource) -> dict[str, list[str]]:
    import datasets

    loaded = datasets.load_dataset(source.dataset_name, source.dataset_config_name)
    splits = {}
    for name, split in (
        ("train", source.train_split),
        ("validation", source.validation_split),
        ("test", source.test_split),
    ):
        if split not in loaded:
            if name == "train":
                raise ValueError(
                    f"Dataset {source.dataset_name!r} has no split {split!r} (it has {sorted(loaded.keys())})"
                )
            continue
        ds = loaded[split]
        if source.text_column not in ds.column_names:
            raise ValueError(
                f"Dataset {source.dataset_name!r} has no column {source.text_column!r} (it has {ds.column_names})"
            )
        rows = [row for row in ds[source.text_column] if row is not None]
        if source.rows_are_lines:
            rows = ["".join(row if row.endswith("\n") else row + "\n" for row in rows)]
        else:
            rows = [row for row in rows if row.strip()]
        lines = {"train": source.train_lines, "validation": source.validation_lines, "test": source.test_lines}[name]
        if lines is not None:
            if len(rows) != 1:
                raise ValueError(f"`{name}_lines` on a Hub dataset needs `rows_are_lines`")
            rows = [_slice(rows[0], lines)]
        splits[name] = rows
    return splits


def load_splits(source: DataSource, tokenizer, cache_dir: str | os.PathLike | None = None) -> dict[str, TextSplit]:
    """Read, split and tokenize (cached under `cache_dir`) the text described by `source`."""
    splits = {}
    for name, docs in load_split_texts(source).items():
        ids = tokenize_documents(docs, tokenizer, cache_dir=cache_dir)
        splits[name] = TextSplit(name=name, input_ids=ids, num_words=sum(count_words(doc) for doc in docs))
    return splits


# ---------------------------------------------------------------------------------------------------------------------
# Datasets for the Trainer


class TokenWindow(NamedTuple):
    """`block_size + 1` consecutive tokens (inputs and, shifted by one, their targets) and the window's position in
    its stream (0 for the first window: a stateful trainer starts from a zero state there)."""

    tokens: torch.LongTensor
    window: int


def _check_length(num_tokens: int, needed: int, what: str) -> None:
    if num_tokens < needed:
        raise ValueError(f"Too little text: {num_tokens} tokens, but {what} needs at least {needed} tokens")


class TokenBlocks(Dataset):
    """Non-overlapping blocks of `block_size` inputs (each with its `block_size` next-token targets) cut from one
    token stream; the Trainer's sampler shuffles them. The tokens after the last whole block are dropped.

    Example:

    ```python
    >>> blocks = TokenBlocks(torch.arange(10), block_size=3)
    >>> len(blocks), blocks[1].tokens.tolist()
    (3, [3, 4, 5, 6])
    ```
    """

    def __init__(self, input_ids: torch.LongTensor, block_size: int):
        if block_size < 1:
            raise ValueError(f"`block_size` must be >= 1, got {block_size}")
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
        _check_length(input_ids.numel(), block_size + 1, f"one block of block_size={block_size} (+1 target)")
        self.input_ids = input_ids
        self.block_size = block_size
        self.num_blocks = (input_ids.numel() - 1) // block_size

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> TokenWindow:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range [0, {self.num_blocks})")
        start = index * self.block_size
        return TokenWindow(self.input_ids[start : start + self.block_size + 1], 0)


class BPTTStreams(Dataset):
    """The token stream cut into `num_streams * num_shards` contiguous streams, read in windows of `block_size`, in an
    order where consecutive batches continue each other: stateful truncated BPTT.

    Batch `k` of shard (process) `r` holds window `k` of that shard's `num_streams` streams, row `i` being stream
    `r * num_streams + i`. Items are laid out so that a sequential sampler cut into batches of `num_streams`, and
    dealt round-robin to `num_shards` processes (what accelerate does to a DataLoader under DDP), gives exactly that.
    Under gradient accumulation the micro-batches are consecutive windows, so they continue each other too.

    The stream of `n` windows covers `n * block_size + 1` tokens (the last input's target is the next window's first
    input); the tokens after the last whole window of every stream are dropped.

    Args:
        input_ids (`torch.LongTensor`): the token stream.
        num_streams (`int`): rows of a batch on one process (`per_device_train_batch_size`).
        block_size (`int`): the BPTT length (inputs per window).
        num_shards (`int`, defaults to 1): the number of processes (world size).

    Example:

    ```python
    >>> streams = BPTTStreams(torch.arange(13), num_streams=2, block_size=3)  # streams [0..6] and [6..12]
    >>> [streams[i].tokens.tolist() for i in range(4)]  # batch 0 = items 0-1, batch 1 = items 2-3
    [[0, 1, 2, 3], [6, 7, 8, 9], [3, 4, 5, 6], [9, 10, 11, 12]]
    ```
    """

    def __init__(self, input_ids: torch.LongTensor, num_streams: int, block_size: int, num_shards: int = 1):
        for name, value in (("num_streams", num_streams), ("block_size", block_size), ("num_shards", num_shards)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
        total_streams = num_streams * num_shards
        _check_length(
            input_ids.numel(),
            total_streams * block_size + 1,
            f"{total_streams} streams of one {block_size}-token window (+1 target)",
        )
        self.num_streams, self.block_size, self.num_shards = num_streams, block_size, num_shards
        self.stream_length = (input_ids.numel() - 1) // total_streams  # inputs per stream
        self.num_windows = self.stream_length // block_size
        used = self.num_windows * block_size
        # (total_streams, used + 1): row s is stream s, its inputs and their targets.
        starts = torch.arange(total_streams) * self.stream_length
        self.streams = torch.stack([input_ids[s : s + used + 1] for s in starts.tolist()])
        self.input_ids = input_ids

    def __len__(self) -> int:
        return self.num_windows * self.num_streams * self.num_shards

    def locate(self, index: int) -> tuple[int, int]:
        """`(stream, window)` of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range [0, {len(self)})")
        batch, row = divmod(index, self.num_streams)
        window, shard = divmod(batch, self.num_shards)
        return shard * self.num_streams + row, window

    def __getitem__(self, index: int) -> TokenWindow:
        stream, window = self.locate(index)
        start = window * self.block_size
        return TokenWindow(self.streams[stream, start : start + self.block_size + 1], window)


class LMCollator:
    """Stacks `TokenWindow`s into a causal-LM batch.

    Returns a dict with `input_ids` and `labels` (both `(batch, block_size)`, `labels = input_ids` as transformers
    models expect), `shift_labels` (the next tokens, `(batch, block_size)`: the loss reads these, so the last
    position of a block is scored against the next block's first token), and `bptt_window` (the window index in its
    stream, a python int; only a stateful trainer reads it).
    """

    def __call__(self, features: list[TokenWindow]) -> dict:
        windows = {feature.window for feature in features}
        if len(windows) != 1:
            raise ValueError(f"A batch mixes windows {sorted(windows)} of its streams; use a sequential sampler")
        tokens = torch.stack([feature.tokens for feature in features])  # (batch, block_size + 1)
        inputs = tokens[:, :-1].contiguous()
        return {
            "input_ids": inputs,
            "labels": inputs.clone(),
            "shift_labels": tokens[:, 1:].contiguous(),
            "bptt_window": windows.pop(),
        }


__all__ = [
    "BPTTStreams",
    "DataSource",
    "LMCollator",
    "TextSplit",
    "TokenBlocks",
    "TokenWindow",
    "count_words",
    "load_split_texts",
    "load_splits",
    "parse_line_range",
    "read_text",
    "select_lines",
    "split_lines",
    "tokenize_documents",
    "tokenize_text",
    "tokenizer_fingerprint",
]
