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
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset
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
# Token files: corpora of any size, tokenized once in bounded memory
#
# A split is tokenized piece by piece into `tokens-<key>.bin` (the raw ids, uint16 when the vocabulary fits, else
# uint32), `tokens-<key>.docs.bin` (int64: where each document's <bos> is) and the manifest `tokens-<key>.json`
# (tokenizer fingerprint, dtype, counts, the sources with their sizes, mtimes and the sha256 of the text read).
# Everything is written under temporary names and renamed, the manifest last, so a half-written cache is never used.
# Training reads the ids through `np.memmap` (`TokenFile.ids`): nothing in memory grows with the corpus.

TOKEN_FILE_VERSION = 1
PIECE_BYTES = 4 << 20  # bytes read from a file at a time
SEGMENT_CHARS = 64 << 10  # characters per encoded segment (cut at a safe point)
BATCH_CHARS = 2 << 20  # characters per `encode_batch` call (the tokenizer's threads share a batch)

# A safe place to cut text into separately tokenized segments: after a non-whitespace character that is followed by
# a space or a newline. Byte-level (GPT-2 style) pre-tokenization, and any pre-tokenization that splits on whitespace,
# never joins the two sides of such a cut into one pre-token, so the segments' ids are exactly the whole text's.
# Each tokenizer is checked on `_CUT_PROBE` first; one that fails (e.g. a prefix space added to every input) is fed
# whole documents instead.
_CUT = re.compile(r"\S(?=[ \n])")
_CUT_PROBE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak,  speak.\t(tab) \n"
    " = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : 1,234.5 km² don't I'm 🙂 <|endoftext|> end\r\nx\n\n\n"
    "  \n last"
)


def _cut_segments(text: str, size: int) -> list[str]:
    """`text` cut at safe points into segments of at least `size` characters (the last may be shorter)."""
    segments, start = [], 0
    while len(text) - start > size:
        match = _CUT.search(text, start + size - 1)
        if match is None:
            break
        segments.append(text[start : match.end()])
        start = match.end()
    segments.append(text[start:])
    return segments


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


class TokenEncoder:
    """Token ids of many texts at once, through the Rust tokenizer's batch API (its threads share a batch).

    Uses a private copy of the fast tokenizer's backend (no truncation, no padding, no special tokens added), or the
    tokenizer's own batch call for a slow tokenizer. `can_cut` says whether texts may be cut at safe points
    (`_CUT`) and tokenized in segments with the same ids as the whole text: checked on a probe text.
    """

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            self._encode = lambda texts: [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
        else:
            self._encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        self.vocab_size = len(tokenizer)
        self.can_cut = self._check_cuts(tokenizer)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self._encode(texts) if texts else []

    def _check_cuts(self, tokenizer) -> bool:
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        if any(getattr(token, "lstrip", False) or getattr(token, "rstrip", False) for token in added.values()):
            return False  # a special token that swallows the whitespace next to it could straddle a cut
        whole = self.encode([_CUT_PROBE])[0]
        pieces = self.encode(_cut_segments(_CUT_PROBE, 1))
        return [i for ids in pieces for i in ids] == whole


class _TokenWriter:
    """Appends documents (`<bos> + tokens(text)`) to a sink, encoding a batch on a worker thread while the next one
    is read and cut (the tokenizer releases the GIL). The sink gets `(ids, doc_starts)` arrays in stream order."""

    def __init__(self, encoder: TokenEncoder, bos: int, sink: Callable[[np.ndarray, np.ndarray], None]):
        self.encoder, self.bos, self.sink = encoder, bos, sink
        self.dtype = token_dtype(encoder.vocab_size)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[str | None] = []  # None: a document starts (its <bos>)
        self.pending_chars = 0
        self.in_flight = None
        self.num_tokens = 0
        self.num_documents = 0
        self.num_words = 0

    def add_document(self, pieces: Iterable[str], count_words: bool = False) -> bool:
        """Queue one document, given as consecutive pieces of its text. Returns whether it had non-blank text."""
        self.pending.append(None)
        carry, nonblank, last = "", False, ""
        for piece in pieces:
            if not piece:
                continue
            last = piece[-1]
            text = carry + piece
            if not self.encoder.can_cut:
                carry = text
                continue
            segments = _cut_segments(text, SEGMENT_CHARS)
            carry = segments.pop()
            for segment in segments:
                nonblank = self._add(segment, count_words) or nonblank
        if carry:
            nonblank = self._add(carry, count_words) or nonblank
        if count_words and last and last != "\n":
            self.num_words += 1  # the last line's end, as `count_words` counts it
        return nonblank

    def _add(self, segment: str, count_words: bool) -> bool:
        self.pending.append(segment)
        self.pending_chars += len(segment)
        if count_words:  # segments are cut between a word and whitespace: no word straddles two of them
            self.num_words += len(segment.split()) + segment.count("\n")
        if self.pending_chars >= BATCH_CHARS:
            self.flush(wait=False)
        return not segment.isspace()

    def flush(self, wait: bool = True) -> None:
        items, self.pending, self.pending_chars = self.pending, [], 0
        future = self.pool.submit(self.encoder.encode, [item for item in items if item is not None])
        self._write_in_flight()
        self.in_flight = (future, items)
        if wait:
            self._write_in_flight()

    def _write_in_flight(self) -> None:
        if self.in_flight is None:
            return
        future, items = self.in_flight
        self.in_flight = None
        encoded = iter(future.result())
        lists, starts, offset = [], [], self.num_tokens
        for item in items:
            if item is None:
                starts.append(offset)
                lists.append((self.bos,))
                offset += 1
            else:
                ids = next(encoded)
                lists.append(ids)
                offset += len(ids)
        count = offset - self.num_tokens
        ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=self.dtype, count=count)
        self.sink(ids, np.asarray(starts, dtype=np.int64))
        self.num_tokens = offset
        self.num_documents += len(starts)

    def close(self) -> None:
        self.flush(wait=True)
        self.pool.shutdown()


def _decode(data: bytes, path: Path, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Text file {path} is not valid UTF-8 (byte {offset + error.start}: {error.reason})"
        ) from error


def _line_offset(data: bytes, line: int) -> int:
    """Byte offset in `data` (whole lines) where line `line` starts."""
    position = 0
    for _ in range(line):
        position = data.find(b"\n", position) + 1
        if position == 0:
            return len(data)
    return position


def iter_file_text(
    path: str | os.PathLike, start_line: int = 0, end_line: int = -1, piece_bytes: int = PIECE_BYTES
) -> Iterator[tuple[str, int]]:
    """Lines `[start_line, end_line)` of a UTF-8 file (`end_line = -1`: to the end), read in pieces of about
    `piece_bytes` bytes and yielded as `(text, num_bytes)`, each piece whole lines. The file is never read whole.

    Raises:
        OSError: the file is missing or unreadable (`FileNotFoundError` names the path).
        ValueError: the file is empty, not valid UTF-8 (the byte offset is named), or has fewer lines than the range.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Text file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"Text file {path} is empty")
    line, offset, rest = 0, 0, b""  # the line index and byte offset of the start of the unread part
    with open(path, "rb") as file:
        while True:
            chunk = file.read(piece_bytes)
            data = rest + chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than a piece: read on
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
            elif not data:
                break
            num_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            low = max(start_line - line, 0)
            high = num_lines if end_line == -1 else min(end_line - line, num_lines)
            if low < high:
                first, last = _line_offset(data, low), _line_offset(data, high)
                yield _decode(data[first:last], path, offset + first), last - first
            line += num_lines
            offset += len(data)
            if not chunk or (end_line != -1 and line >= end_line):
                break
    if start_line >= line or (end_line != -1 and end_line > line):
        raise ValueError(f"Line range [{start_line}, {end_line}) is outside {path}, which has {line} lines")


def count_file_lines(path: str | os.PathLike, piece_bytes: int = PIECE_BYTES) -> int:
    """Lines of a file as `split_lines` counts them (only `\\n` ends a line; a last line may lack it), read in
    pieces."""
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        while chunk := file.read(piece_bytes):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


@dataclass(frozen=True)
class FileDocument:
    """One document: lines `[start_line, end_line)` of a local UTF-8 file (`end_line = -1`: to the end)."""

    path: str
    start_line: int = 0
    end_line: int = -1

    def key(self) -> dict:
        return {"path": str(Path(self.path).resolve()), "lines": [self.start_line, self.end_line]}

    def state(self) -> dict:
        stat = Path(self.path).stat()
        return {**self.key(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def num_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def pieces(self) -> Iterator[tuple[str, int]]:
        return iter_file_text(self.path, self.start_line, self.end_line)


@dataclass(frozen=True)
class TextDocument:
    """One document already in memory (a row of a non-streaming dataset)."""

    text: str

    def key(self) -> dict:
        return {"sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest()}

    def state(self) -> dict:
        return self.key()

    def num_bytes(self) -> int:
        return len(self.text)

    def pieces(self) -> Iterator[tuple[str, int]]:
        yield self.text, len(self.text)


class TokenFile:
    """A tokenized split on disk (see `prepare_token_file`), read without loading it.

    Attributes:
        path (`Path`): the manifest, `tokens-<key>.json`; the ids are in `tokens-<key>.bin`, the documents' starts in
            `tokens-<key>.docs.bin`.
        manifest (`dict`): dtype, counts, tokenizer fingerprint, sources, time taken.
        reused (`bool`): the file was already there (nothing was tokenized).
    """

    def __init__(self, path: str | os.PathLike, reused: bool = False):
        self.path = Path(path)
        self.manifest = json.loads(self.path.read_text())
        self.reused = reused
        self.dtype = np.dtype(self.manifest["dtype"])
        self.num_tokens = int(self.manifest["num_tokens"])
        for file, count, dtype in (
            (self.ids_path, self.num_tokens, self.dtype),
            (self.docs_path, int(self.manifest["num_documents"]), np.dtype(np.int64)),
        ):
            if not file.exists() or file.stat().st_size != count * dtype.itemsize:
                raise ValueError(f"Token file {file} does not match its manifest {self.path}: tokenize again")
        self._ids = None

    @property
    def ids_path(self) -> Path:
        return self.path.with_suffix(".bin")

    @property
    def docs_path(self) -> Path:
        return self.path.with_suffix(".docs.bin")

    @property
    def ids(self) -> np.ndarray:
        """The token stream, `(num_tokens,)`, memory-mapped read-only (pages are read when touched)."""
        if self._ids is None:
            self._ids = np.memmap(self.ids_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        return self._ids

    @property
    def doc_starts(self) -> np.ndarray:
        """Where each document's `<bos>` is in `ids`, memory-mapped."""
        count = int(self.manifest["num_documents"])
        return np.memmap(self.docs_path, dtype=np.int64, mode="r", shape=(count,))

    @property
    def num_words(self) -> int | None:
        return self.manifest.get("num_words")

    @property
    def nbytes(self) -> int:
        """Bytes on disk (ids and document index)."""
        return self.ids_path.stat().st_size + self.docs_path.stat().st_size

    def summary(self) -> str:
        """One line: tokens, bytes on disk, time."""
        m = self.manifest
        how = (
            "reused"
            if self.reused
            else f"tokenized in {m['seconds']:.1f}s ({m['num_tokens'] / max(m['seconds'], 1e-9):,.0f} tokens/s)"
        )
        return (
            f"{m['name']}: {self.num_tokens:,} tokens from {m['num_text_bytes'] / 2**20:,.1f} MiB of text, "
            f"{self.nbytes / 2**20:,.1f} MiB on disk ({self.dtype.name}, "
            f"{m['num_text_bytes'] / max(self.num_tokens, 1):.2f} text bytes/token), {how}: {self.path}"
        )


def _token_file_key(tokenizer, documents_key) -> str:
    description = {
        "version": TOKEN_FILE_VERSION,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "documents": documents_key,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:40]


def prepare_token_file(
    documents: Sequence[FileDocument | TextDocument] | Iterable,
    tokenizer,
    cache_dir: str | os.PathLike,
    name: str = "train",
    count_words: bool = True,
    show_progress: bool = False,
    key: dict | None = None,
    state: dict | None = None,
    total_bytes: int | None = None,
) -> TokenFile:
    """Tokenize `documents` once into a token file under `cache_dir`, or reuse the one already there.

    Each document becomes `<bos> + tokens(text)`, exactly the ids of `tokenize_documents` (the text is read in pieces
    and cut at safe points, see `TokenEncoder`). Memory stays bounded whatever the corpus size: a few MB of text and
    two batches of ids at a time. The file is reused when the tokenizer, the documents and their sources (sizes and
    mtimes) are unchanged.

    Args:
        documents: `FileDocument`s / `TextDocument`s, or any iterable of objects with a `pieces()` method yielding
            `(text, num_bytes)` (then give `key` and `state`).
        tokenizer: the tokenizer (its bos token, else eos, starts each document).
        cache_dir: where the files go.
        name (`str`): the split's name (for the summary and errors).
        count_words (`bool`): count the words (`count_words`) for word-level perplexity.
        show_progress (`bool`): a progress bar (bytes of text) through `transformers.utils.logging.tqdm`.
        key, state (`dict`, *optional*): what names the documents (the cache key) and their current state (the file
            is re-made when it changes); by default from the documents' own `key()`/`state()`.
        total_bytes (`int`, *optional*): the progress bar's total.

    Raises:
        ValueError: the split has no non-blank text, or a source is bad (see `iter_file_text`).
    """
    if key is None:
        documents = list(documents)
        if not documents:
            raise ValueError(f"The {name} split has no documents")
        key = [document.key() for document in documents]
        state = [document.state() for document in documents]
        total_bytes = sum(document.num_bytes() for document in documents)
    cache_dir = Path(cache_dir)
    stem = f"tokens-{_token_file_key(tokenizer, key)}"
    manifest_path = cache_dir / f"{stem}.json"
    if manifest_path.exists():
        try:
            token_file = TokenFile(manifest_path, reused=True)
            if token_file.manifest.get("sources") == state:
                logger.info(f"Reusing the token file {manifest_path}")
                return token_file
        except (ValueError, KeyError, json.JSONDecodeError):
            pass
        logger.info(f"The sources of {manifest_path} changed: tokenizing again")

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    tmp_ids, tmp_docs, tmp_manifest = (
        cache_dir / f"{stem}.{tag}.tmp{suffix}" for suffix in (".bin", ".docs.bin", ".json")
    )
    start = time.monotonic()
    encoder = TokenEncoder(tokenizer)
    if not encoder.can_cut:
        logger.warning(
            "This tokenizer gives different ids when a text is cut at whitespace: each document is tokenized whole "
            "(memory grows with the longest document)"
        )
    text_sha = hashlib.sha256()
    num_text_bytes = 0
    try:
        with open(tmp_ids, "wb") as ids_file, open(tmp_docs, "wb") as docs_file:

            def sink(ids: np.ndarray, starts: np.ndarray) -> None:
                ids.tofile(ids_file)
                starts.tofile(docs_file)

            writer = _TokenWriter(encoder, _bos_id(tokenizer), sink)
            bar = logging.tqdm(
                total=total_bytes, unit="B", unit_scale=True, desc=f"Tokenizing {name}", disable=not show_progress
            )
            nonblank = False

            def pieces(document):
                nonlocal num_text_bytes
                for text, num_bytes in document.pieces():
                    text_sha.update(text.encode("utf-8"))
                    num_text_bytes += num_bytes
                    bar.update(num_bytes)
                    yield text

            try:
                for document in documents:
                    nonblank = writer.add_document(pieces(document), count_words=count_words) or nonblank
                writer.close()
            finally:
                writer.pool.shutdown(wait=True)
                bar.close()
        if not nonblank:
            raise ValueError(f"The {name} split is empty")
        manifest = {
            "version": TOKEN_FILE_VERSION,
            "name": name,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "bos_token_id": _bos_id(tokenizer),
            "dtype": writer.dtype.name,
            "num_tokens": writer.num_tokens,
            "num_documents": writer.num_documents,
            "num_words": writer.num_words if count_words else None,
            "num_text_bytes": num_text_bytes,
            "text_sha256": text_sha.hexdigest(),
            "documents": key,
            "sources": state,
            "seconds": time.monotonic() - start,
        }
        tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
        # Data first, manifest last: a manifest that exists always describes complete files.
        os.replace(tmp_ids, cache_dir / f"{stem}.bin")
        os.replace(tmp_docs, cache_dir / f"{stem}.docs.bin")
        os.replace(tmp_manifest, manifest_path)
    finally:
        for path in (tmp_ids, tmp_docs, tmp_manifest):
            path.unlink(missing_ok=True)
    return TokenFile(manifest_path)


def as_long_tensor(ids) -> torch.LongTensor:
    """A slice of a token stream (torch tensor, numpy array or memmap) as a new int64 tensor."""
    if isinstance(ids, torch.Tensor):
        return ids.long()
    return torch.from_numpy(np.asarray(ids).astype(np.int64))


# ---------------------------------------------------------------------------------------------------------------------
# Splits


@dataclass
class TextSplit:
    """One split of a corpus: its token stream, and its word count (for word-level perplexity).

    Args:
        name (`str`): "train", "validation" or "test".
        input_ids (`torch.LongTensor` or `np.ndarray` of shape `(num_tokens,)`): `<bos> + tokens(doc)` for each
            document; a read-only `np.memmap` of a token file when the split was prepared with a `cache_dir`.
        num_words (`int`, *optional*): words of the text, counted with `count_words`.
        token_file (`TokenFile`, *optional*): the token file the ids are mapped from.
    """

    name: str
    input_ids: torch.LongTensor | np.ndarray
    num_words: int | None
    token_file: TokenFile | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_predicted(self) -> int:
        """Tokens predicted when the stream is scored from its first token: all but the first."""
        return self.num_tokens - 1


@dataclass
class DataSource:
    """Where the text of each split comes from (see `load_splits`).

    Args:
        train_files (`list[str]`, *optional*): local UTF-8 text files; each file is one document.
        validation_file, test_file (`str`, *optional*): held-out files.
        train_lines, validation_lines, test_lines (`str`, *optional*): `"start:end"` line ranges. With a single train
            file and no validation/test file, they cut that file into contiguous splits (e.g. `"0:36000"`,
            `"36000:38000"`, `"38000:40000"`); with a separate file they select lines of that file.
        dataset_name, dataset_config_name (`str`, *optional*): a dataset on the Hub (or a local dataset folder, or a
            `datasets` builder such as `"text"` or `"json"` reading `data_files`).
        data_files (`list[str]` or `dict[str, str | list[str]]`, *optional*): files for the builder (a list: the train
            split; a dict: split name to files).
        streaming (`bool`): read the dataset with `load_dataset(..., streaming=True)`: rows are fetched as they are
            tokenized, never all loaded (`load_streamed_splits`); needs a `cache_dir` in `load_splits`. (Local
            `train_files` are always read in pieces.)
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
    data_files: list[str] | dict | None = None
    streaming: bool = False
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
    from ._extras import require

    datasets = require("datasets", "train", "Training on a Hub dataset (`dataset_name`)")

    kwargs = {"data_files": source.data_files} if source.data_files is not None else {}
    loaded = datasets.load_dataset(source.dataset_name, source.dataset_config_name, **kwargs)
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


def _line_range(spec: str | None) -> tuple[int, int]:
    return (0, -1) if spec is None else parse_line_range(spec)


def split_documents(source: DataSource) -> dict[str, list[FileDocument]]:
    """The documents of each split of local files, as `FileDocument`s (file + line range): the same splits as
    `load_split_texts`, found without reading any file whole (only lines are counted, to hold out validation)."""
    if source.train_files is None:
        raise ValueError("`split_documents` reads local files: give `train_files`")
    if not source.train_files:
        raise ValueError("`train_files` is empty")
    if not 0 <= source.validation_split_percentage < 100:
        raise ValueError(f"`validation_split_percentage` must be in [0, 100), got {source.validation_split_percentage}")
    for path in source.train_files:
        if not Path(path).exists():
            raise FileNotFoundError(f"Text file not found: {path}")
    one_file = len(source.train_files) == 1
    splits: dict[str, list[FileDocument]] = {}
    if source.train_lines is not None:
        if not one_file:
            raise ValueError("`train_lines` needs exactly one train file")
        splits["train"] = [FileDocument(source.train_files[0], *_line_range(source.train_lines))]
    else:
        splits["train"] = [FileDocument(path) for path in source.train_files]
    for name, file, lines in (
        ("validation", source.validation_file, source.validation_lines),
        ("test", source.test_file, source.test_lines),
    ):
        if file is not None:
            splits[name] = [FileDocument(file, *_line_range(lines))]
        elif lines is not None:
            if not one_file:
                raise ValueError(f"`{name}_lines` without a `{name}_file` needs exactly one train file")
            splits[name] = [FileDocument(source.train_files[0], *_line_range(lines))]
    if "validation" not in splits and source.validation_split_percentage > 0:
        train = splits["train"]
        if len(train) == 1:  # one text: hold out its last lines
            doc = train[0]
            end = count_file_lines(doc.path) if doc.end_line == -1 else doc.end_line
            num_lines = end - doc.start_line
            held = max(1, int(num_lines * source.validation_split_percentage / 100))
            if held >= num_lines:
                raise ValueError(f"The train text has {num_lines} lines, too few to hold out a validation part")
            splits["train"] = [FileDocument(doc.path, doc.start_line, end - held)]
            splits["validation"] = [FileDocument(doc.path, end - held, end)]
        else:  # several documents: hold out the last ones
            held = max(1, int(len(train) * source.validation_split_percentage / 100))
            if held >= len(train):
                raise ValueError(f"The train split has {len(train)} documents, too few to hold out a validation part")
            splits["train"], splits["validation"] = train[:-held], train[-held:]
    return splits


def load_splits(
    source: DataSource,
    tokenizer,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
    count_train_words: bool = True,
    tokenize_train: bool = True,
) -> dict[str, TextSplit]:
    """Read, split and tokenize the text described by `source`.

    With `cache_dir`, each split is tokenized once into a token file there (`prepare_token_file`: local files read in
    pieces, bounded memory, reused when nothing changed) and its `input_ids` is a read-only memory map of it: corpora
    of any size. Without, the text is read and tokenized in memory (`load_split_texts`, `tokenize_documents`).
    `count_train_words=False` skips counting the train split's words (only held-out splits need them).

    With `source.streaming`, a dataset is read with `load_dataset(..., streaming=True)` into the same token files
    (`load_streamed_splits`); local files are read in pieces either way. `tokenize_train=False` leaves the train
    split out (to train straight from the stream or the files, `StreamedBPTT`).
    """
    if source.streaming and source.train_files is None:
        if cache_dir is None:
            raise ValueError("A streamed dataset is tokenized into token files: give a `cache_dir`")
        splits = {}
        for name, split in load_streamed_splits(source).items():
            if name == "train" and not tokenize_train:
                continue
            token_file = prepare_token_file(
                split,
                tokenizer,
                cache_dir,
                name=name,
                count_words=count_train_words or name != "train",
                show_progress=show_progress,
                key=split.key(),
                state=split.state(),
            )
            splits[name] = TextSplit(name, token_file.ids, token_file.num_words, token_file=token_file)
        return splits
    if cache_dir is None:
        splits = {}
        for name, docs in load_split_texts(source).items():
            ids = tokenize_documents(docs, tokenizer)
            splits[name] = TextSplit(name=name, input_ids=ids, num_words=sum(count_words(doc) for doc in docs))
        return splits
    if source.train_files is not None:
        documents = split_documents(source)
    else:  # a (non-streaming) Hub dataset: its rows are in memory already
        documents = {name: [TextDocument(text) for text in texts] for name, texts in load_split_texts(source).items()}
    splits = {}
    for name, docs in documents.items():
        if name == "train" and not tokenize_train:
            continue
        count = count_train_words or name != "train"
        token_file = prepare_token_file(
            docs, tokenizer, cache_dir, name=name, count_words=count, show_progress=show_progress
        )
        splits[name] = TextSplit(name, token_file.ids, token_file.num_words, token_file=token_file)
    return splits


# ---------------------------------------------------------------------------------------------------------------------
# Datasets for the Trainer


class TokenWindow(NamedTuple):
    """`block_size + 1` consecutive tokens (inputs and, shifted by one, their targets) and the window's position in
    its stream (0 for the first window: a stateful trainer starts from a zero state there)."""

    tokens: torch.LongTensor
    window: int


def _as_stream(input_ids):
    """A 1-d token stream: numpy arrays (and memory maps) as they are, anything else as a LongTensor."""
    if isinstance(input_ids, np.ndarray):
        if input_ids.ndim != 1:
            raise ValueError(f"A token stream must be 1-d, got shape {input_ids.shape}")
        return input_ids
    return torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)


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

    def __init__(self, input_ids: torch.LongTensor | np.ndarray, block_size: int):
        if block_size < 1:
            raise ValueError(f"`block_size` must be >= 1, got {block_size}")
        input_ids = _as_stream(input_ids)
        _check_length(len(input_ids), block_size + 1, f"one block of block_size={block_size} (+1 target)")
        self.input_ids = input_ids  # not copied: a memory-mapped token file stays on disk
        self.block_size = block_size
        self.num_blocks = (len(input_ids) - 1) // block_size

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> TokenWindow:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range [0, {self.num_blocks})")
        start = index * self.block_size
        return TokenWindow(as_long_tensor(self.input_ids[start : start + self.block_size + 1]), 0)


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

    def __init__(
        self, input_ids: torch.LongTensor | np.ndarray, num_streams: int, block_size: int, num_shards: int = 1
    ):
        for name, value in (("num_streams", num_streams), ("block_size", block_size), ("num_shards", num_shards)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        input_ids = _as_stream(input_ids)
        total_streams = num_streams * num_shards
        _check_length(
            len(input_ids),
            total_streams * block_size + 1,
            f"{total_streams} streams of one {block_size}-token window (+1 target)",
        )
        self.num_streams, self.block_size, self.num_shards = num_streams, block_size, num_shards
        self.stream_length = (len(input_ids) - 1) // total_streams  # inputs per stream
        self.num_windows = self.stream_length // block_size
        # Stream s is input_ids[s * stream_length : s * stream_length + num_windows * block_size + 1]: items are index
        # views into the one stream (no copy), so under DDP a process only ever reads its own streams' tokens.
        self.input_ids = input_ids

    def __len__(self) -> int:
        return self.num_windows * self.num_streams * self.num_shards

    def stream(self, stream: int):
        """The tokens of stream `stream` (its inputs, and the last input's target): a slice of `input_ids`, no copy."""
        if not 0 <= stream < self.num_streams * self.num_shards:
            raise IndexError(f"stream {stream} out of range [0, {self.num_streams * self.num_shards})")
        start = stream * self.stream_length
        return self.input_ids[start : start + self.num_windows * self.block_size + 1]

    def locate(self, index: int) -> tuple[int, int]:
        """`(stream, window)` of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range [0, {len(self)})")
        batch, row = divmod(index, self.num_streams)
        window, shard = divmod(batch, self.num_shards)
        return shard * self.num_streams + row, window

    def __getitem__(self, index: int) -> TokenWindow:
        stream, window = self.locate(index)
        start = stream * self.stream_length + window * self.block_size
        return TokenWindow(as_long_tensor(self.input_ids[start : start + self.block_size + 1]), window)


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


# ---------------------------------------------------------------------------------------------------------------------
# Streaming datasets: rows fetched as they are needed (`datasets.load_dataset(..., streaming=True)`)

ROWS_PER_PIECE = 1000  # rows joined into one piece of text when the rows are lines


class StreamedSplit:
    """One split of a dataset read with `datasets.load_dataset(..., streaming=True)`: an iterable of documents
    (objects with `pieces()`), fetched row by row, never all at once. Each non-blank row is a document, or, with
    `source.rows_are_lines`, the rows are the lines of one document (each ends with `\\n`), as in `load_split_texts`.

    Args:
        source (`DataSource`): `dataset_name` (a Hub id, a local dataset folder, or a builder such as `"text"` or
            `"json"` with `data_files`), `dataset_config_name`, `text_column`, `rows_are_lines`.
        split (`str`): the dataset's split name.
        dataset: the `datasets.IterableDataset` of that split.
    """

    def __init__(self, source: DataSource, split: str, dataset):
        self.source, self.split, self.dataset = source, split, dataset

    def key(self) -> dict:
        source = self.source
        return {
            "dataset": source.dataset_name,
            "config": source.dataset_config_name,
            "split": self.split,
            "data_files": _data_file_states(source.data_files, with_stat=False),
            "text_column": source.text_column,
            "rows_are_lines": source.rows_are_lines,
        }

    def state(self) -> dict:
        return {**self.key(), "data_files": _data_file_states(self.source.data_files, with_stat=True)}

    def _texts(self) -> Iterator[str]:
        column = self.source.text_column
        for row in self.dataset:
            if column not in row:
                raise ValueError(
                    f"Dataset {self.source.dataset_name!r} has no column {column!r} (it has {sorted(row)})"
                )
            text = row[column]
            if text is not None:
                yield text

    def __iter__(self):
        if self.source.rows_are_lines:
            yield _RowsAsLines(self._texts())
        else:
            for text in self._texts():
                if text.strip():
                    yield TextDocument(text)


class _RowsAsLines:
    def __init__(self, texts: Iterator[str]):
        self.texts = texts

    def pieces(self) -> Iterator[tuple[str, int]]:
        while rows := list(itertools.islice(self.texts, ROWS_PER_PIECE)):
            text = "".join(row if row.endswith("\n") else row + "\n" for row in rows)
            yield text, len(text)


def _data_file_states(data_files, with_stat: bool):
    if data_files is None:
        return None
    states = []
    for path in [data_files] if isinstance(data_files, str) else data_files:
        state = {"path": str(Path(path).resolve()) if Path(path).exists() else str(path)}
        if with_stat and Path(path).exists():
            stat = Path(path).stat()
            state.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        states.append(state)
    return states


def load_streamed_splits(source: DataSource) -> dict[str, StreamedSplit]:
    """The train (and validation/test, when the dataset has them) splits of `source.dataset_name`, opened with
    `datasets.load_dataset(..., streaming=True)`: nothing is downloaded or read until the documents are iterated.

    Raises:
        ValueError: the dataset has no train split, a line range is asked for (streamed rows have no line numbers),
            or there is no validation split and `validation_split_percentage > 0` (a stream has no length to take a
            percentage of: set it to 0 or give a dataset with a validation split).
    """
    import datasets

    if source.dataset_name is None:
        raise ValueError("Streaming reads a `datasets` dataset: give `dataset_name` (e.g. 'text' with `data_files`)")
    if any(lines is not None for lines in (source.train_lines, source.validation_lines, source.test_lines)):
        raise ValueError("Line ranges cannot select rows of a streamed dataset; drop `*_lines` or `streaming`")
    kwargs = {"data_files": source.data_files} if source.data_files is not None else {}
    loaded = datasets.load_dataset(source.dataset_name, source.dataset_config_name, streaming=True, **kwargs)
    splits = {}
    for name, split in (
        ("train", source.train_split),
        ("validation", source.validation_split),
        ("test", source.test_split),
    ):
        if split in loaded:
            splits[name] = StreamedSplit(source, split, loaded[split])
        elif name == "train":
            raise ValueError(f"Dataset {source.dataset_name!r} has no split {split!r} (it has {sorted(loaded.keys())})")
    if "validation" not in splits and source.validation_split_percentage > 0:
        raise ValueError(
            f"Dataset {source.dataset_name!r} has no {source.validation_split!r} split, and a streamed dataset has no "
            "length to hold out a percentage of: set `validation_split_percentage` to 0 (or name a validation split)"
        )
    return splits


def iter_token_arrays(documents: Iterable, tokenizer) -> Iterator[np.ndarray]:
    """`<bos> + tokens(doc)` of each document, as consecutive arrays of ids (the same ids as a token file's), in
    bounded memory: documents are read, cut and encoded in batches as the arrays are consumed."""
    arrays: list[np.ndarray] = []
    writer = _TokenWriter(TokenEncoder(tokenizer), _bos_id(tokenizer), lambda ids, starts: arrays.append(ids))
    try:
        for document in documents:
            writer.add_document(text for text, _ in document.pieces())
            while arrays:
                yield arrays.pop(0)
        writer.close()
        yield from arrays
    finally:
        writer.pool.shutdown(wait=True)


class StreamedBPTT(IterableDataset):
    """Training windows read straight from a stream of documents, without a token file: the token stream is taken
    in chunks of `num_streams * num_shards * windows_per_chunk * block_size + 1` tokens, and each chunk is served as a
    `BPTTStreams` (same item order, so the same batches, sharding and stateful BPTT within a chunk). Streams restart
    at every chunk (window 0: a stateful trainer resets the state there). Memory holds one chunk and a batch of text.

    Iterating again starts the stream again from its first document (the Trainer's next epoch, or a resumed run
    skipping the batches it already trained on: the same windows, since tokenization is deterministic).

    Args:
        documents: an iterable of documents (re-iterable: a `StreamedSplit`, or a list of `FileDocument`s).
        tokenizer: the tokenizer.
        num_streams, block_size, num_shards: as in `BPTTStreams`.
        windows_per_chunk (`int`, defaults to 64): windows of each stream per chunk.
    """

    def __init__(
        self, documents, tokenizer, num_streams: int, block_size: int, num_shards: int = 1, windows_per_chunk: int = 64
    ):
        for name, value in (
            ("num_streams", num_streams),
            ("block_size", block_size),
            ("num_shards", num_shards),
            ("windows_per_chunk", windows_per_chunk),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        self.documents, self.tokenizer = documents, tokenizer
        self.num_streams, self.block_size, self.num_shards = num_streams, block_size, num_shards
        self.windows_per_chunk = windows_per_chunk

    def chunks(self) -> Iterator[BPTTStreams]:
        """The stream's chunks, each a `BPTTStreams`; the last, shorter one holds the windows the rest still fills."""
        rows = self.num_streams * self.num_shards
        size = rows * self.windows_per_chunk * self.block_size + 1
        buffer, start = np.empty(0, dtype=token_dtype(len(self.tokenizer))), 0
        for array in iter_token_arrays(self.documents, self.tokenizer):
            buffer, start = np.concatenate([buffer[start:], array]), 0
            while len(buffer) - start >= size:
                yield BPTTStreams(buffer[start : start + size], self.num_streams, self.block_size, self.num_shards)
                start += size - 1  # the chunk's last target is the next chunk's first input
        if len(buffer) - start >= rows * self.block_size + 1:
            yield BPTTStreams(buffer[start:], self.num_streams, self.block_size, self.num_shards)

    def __iter__(self) -> Iterator[TokenWindow]:
        for chunk in self.chunks():
            for index in range(len(chunk)):
                yield chunk[index]


__all__ = [
    "BPTTStreams",
    "DataSource",
    "FileDocument",
    "LMCollator",
    "StreamedBPTT",
    "StreamedSplit",
    "TextDocument",
    "TextSplit",
    "TokenEncoder",
    "TokenFile",
    "TokenBlocks",
    "TokenWindow",
    "as_long_tensor",
    "count_file_lines",
    "count_words",
    "iter_file_text",
    "iter_token_arrays",
    "load_split_texts",
    "load_splits",
    "load_streamed_splits",
    "prepare_token_file",
    "parse_line_range",
    "read_text",
    "select_lines",
    "split_documents",
    "split_lines",
    "token_dtype",
    "tokenize_documents",
    "tokenize_text",
    "tokenizer_fingerprint",
]
