"""Token files: corpora tokenized once, in pieces and bounded memory, into memory-mapped files.

The ids must be exactly those of the in-memory path (`tokenize_documents`: `<bos> + tokens(doc)` per document), with
the text cut into many pieces, segments and batches; the cache is reused only when nothing changed, and a failed
write leaves nothing behind. `BPTTStreams`/`TokenBlocks` over a memory map are index views that read only the
requested windows.
"""

import os

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from transformers import AutoTokenizer

from modeling_lstmlm import data as data_module
from modeling_lstmlm.data import (
    BPTTStreams,
    DataSource,
    FileDocument,
    TokenBlocks,
    TokenEncoder,
    TokenFile,
    count_words,
    iter_file_text,
    load_splits,
    prepare_token_file,
    read_text,
    token_dtype,
    tokenize_documents,
)
from modeling_lstmlm.evaluation import score_stream

TOKENIZER_DIR = REPO_ROOT / "tokenizer"
SHAKESPEARE = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"

# Whitespace a cut must not change: blank lines, runs of spaces, " \n", tabs, CRLF, a special token typed in the
# text, non-ASCII, no final newline.
TRICKY = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\nAll:\n  Speak,   speak.\t\ttab \n"
    " = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : 1,234.5 km² don't I'm 🙂 <|endoftext|> end\r\n"
    "x \n\n  \n  indented\nlast line without newline"
)


@pytest.fixture(scope="module")
def tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip("the committed tokenizer/ folder is missing")
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Read 64-byte pieces, cut 16-character segments, encode 100-character batches: many of each."""
    monkeypatch.setattr(data_module, "PIECE_BYTES", 64)
    monkeypatch.setattr(data_module, "SEGMENT_CHARS", 16)
    monkeypatch.setattr(data_module, "BATCH_CHARS", 100)


def _write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_the_project_tokenizer_can_be_cut_at_whitespace(tokenizer):
    assert TokenEncoder(tokenizer).can_cut


def test_token_file_ids_equal_the_in_memory_path(tokenizer, tmp_path, tiny_pieces):
    files = [_write(tmp_path / "a.txt", TRICKY), _write(tmp_path / "b.txt", "ab\n"), _write(tmp_path / "c.txt", TRICKY)]
    texts = [read_text(path) for path in files]
    expected = tokenize_documents(texts, tokenizer).tolist()
    token_file = prepare_token_file([FileDocument(str(path)) for path in files], tokenizer, tmp_path / "cache")

    assert np.asarray(token_file.ids).tolist() == expected
    assert token_file.ids.dtype == np.uint16 and isinstance(token_file.ids, np.memmap)
    bos = tokenizer.bos_token_id
    first = len(tokenizer(texts[0], add_special_tokens=False)["input_ids"]) + 1
    assert token_file.doc_starts.tolist() == [0, first, first + 1 + len(tokenizer("ab\n")["input_ids"])]
    assert all(expected[i] == bos for i in token_file.doc_starts.tolist())
    assert token_file.num_words == sum(count_words(text) for text in texts)
    assert token_file.nbytes == 2 * len(expected) + 8 * 3  # uint16 ids + the int64 document index


def test_token_file_of_tinyshakespeare_lines_equals_the_in_memory_path(tokenizer, tmp_path):
    text = "".join(read_text(SHAKESPEARE).split("\n")[100:3100][i] + "\n" for i in range(3000))
    expected = tokenize_documents([text], tokenizer).tolist()
    token_file = prepare_token_file([FileDocument(str(SHAKESPEARE), 100, 3100)], tokenizer, tmp_path)
    assert np.asarray(token_file.ids).tolist() == expected
    assert token_file.num_words == count_words(text)


@pytest.mark.parametrize(
    "source",
    [
        dict(train_lines="0:300", validation_lines="300:340", test_lines="340:380"),
        dict(train_lines="10:400", validation_split_percentage=10),
        dict(validation_split_percentage=5),
    ],
    ids=["line-ranges", "held-out-of-a-range", "held-out-of-the-file"],
)
def test_load_splits_through_token_files_equals_in_memory(tokenizer, tmp_path, source, tiny_pieces):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(read_text(SHAKESPEARE).splitlines(keepends=True)[:500]))
    source = DataSource(train_files=[str(path)], **source)
    in_memory = load_splits(source, tokenizer)
    mapped = load_splits(source, tokenizer, cache_dir=tmp_path / "cache")
    assert sorted(mapped) == sorted(in_memory)
    for name, split in in_memory.items():
        assert isinstance(mapped[name].input_ids, np.memmap)
        assert np.asarray(mapped[name].input_ids).tolist() == split.input_ids.tolist(), name
        assert mapped[name].num_words == split.num_words
        assert mapped[name].num_predicted == split.num_predicted


def test_held_out_documents_of_several_files(tokenizer, tmp_path):
    files = [str(_write(tmp_path / f"{i}.txt", f"document {i}\n")) for i in range(4)]
    source = DataSource(train_files=files, validation_split_percentage=25)
    mapped = load_splits(source, tokenizer, cache_dir=tmp_path / "cache")
    in_memory = load_splits(source, tokenizer)
    assert mapped["validation"].token_file.manifest["num_documents"] == 1
    for name in ("train", "validation"):
        assert np.asarray(mapped[name].input_ids).tolist() == in_memory[name].input_ids.tolist()


def test_token_file_is_reused_until_the_source_changes(tokenizer, tmp_path, monkeypatch):
    path = _write(tmp_path / "a.txt", "one two\n")
    first = prepare_token_file([FileDocument(str(path))], tokenizer, tmp_path / "cache")
    assert not first.reused

    def refuse(self, texts):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(TokenEncoder, "encode", refuse)
    monkeypatch.setattr(TokenEncoder, "_check_cuts", lambda self, tokenizer: True)
    again = prepare_token_file([FileDocument(str(path))], tokenizer, tmp_path / "cache")
    assert again.reused and again.path == first.path

    _write(path, "one two three\n")
    os.utime(path, ns=(first.manifest["sources"][0]["mtime_ns"] + 10**9,) * 2)
    with pytest.raises(AssertionError, match="tokenized again"):
        prepare_token_file([FileDocument(str(path))], tokenizer, tmp_path / "cache")
    monkeypatch.undo()
    changed = prepare_token_file([FileDocument(str(path))], tokenizer, tmp_path / "cache")
    assert changed.path == first.path and not changed.reused
    assert np.asarray(changed.ids).tolist() == tokenize_documents(["one two three\n"], tokenizer).tolist()


def test_a_failed_write_leaves_nothing_and_a_truncated_file_is_not_used(tokenizer, tmp_path, monkeypatch):
    good = _write(tmp_path / "good.txt", "fine text\n" * 50)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 50 + b"caf\xe9\n")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"bad.txt is not valid UTF-8 \(byte 503"):
        prepare_token_file([FileDocument(str(good)), FileDocument(str(bad))], tokenizer, cache)
    assert list(cache.iterdir()) == []  # no manifest, no half-written ids

    token_file = prepare_token_file([FileDocument(str(good))], tokenizer, cache)
    with open(token_file.ids_path, "r+b") as file:  # e.g. a disk that filled up behind the manifest's back
        file.truncate(10)
    with pytest.raises(ValueError, match="does not match its manifest"):
        TokenFile(token_file.path)
    remade = prepare_token_file([FileDocument(str(good))], tokenizer, cache)
    assert not remade.reused and remade.num_tokens == token_file.num_tokens


def test_file_reading_errors(tmp_path):
    path = _write(tmp_path / "three.txt", "a\nb\nc\n")
    assert [text for text, _ in iter_file_text(path, 1, 3)] == ["b\nc\n"]
    with pytest.raises(ValueError, match=r"Line range \[1, 9\) is outside .*three.txt, which has 3 lines"):
        list(iter_file_text(path, 1, 9))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(iter_file_text(tmp_path / "nope.txt"))
    blank = _write(tmp_path / "blank.txt", " \n\n")
    with pytest.raises(ValueError, match="The train split is empty"):
        prepare_token_file([FileDocument(str(blank))], AutoTokenizer.from_pretrained(TOKENIZER_DIR), tmp_path / "c")
    assert not list((tmp_path / "c").glob("*"))


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(8192) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


class RecordingArray(np.ndarray):
    """A token stream that records which slices are read."""

    def __getitem__(self, key):
        if isinstance(key, slice):
            self.reads.append((key.start, key.stop))
        return np.asarray(super().__getitem__(key))


def test_streams_over_a_memory_map_are_views_read_per_window(tmp_path):
    ids = np.arange(1000, dtype=np.uint16)
    ids.tofile(tmp_path / "ids.bin")
    mapped = np.memmap(tmp_path / "ids.bin", dtype=np.uint16, mode="r")
    reference = BPTTStreams(torch.arange(1000), num_streams=3, block_size=5, num_shards=2)
    streams = BPTTStreams(mapped, num_streams=3, block_size=5, num_shards=2)
    assert streams.input_ids is mapped and not hasattr(streams, "streams")  # no stacked copy
    for i in range(len(streams)):
        assert streams[i].tokens.dtype == torch.long
        assert streams[i].tokens.tolist() == reference[i].tokens.tolist() and streams[i].window == reference[i].window

    # Rank 1 of 2 reads only its own three streams (streams 3-5), one window at a time.
    recording = np.arange(1000).view(RecordingArray)
    recording.reads = []
    sharded = BPTTStreams(recording, num_streams=3, block_size=5, num_shards=2)
    rank1 = [i for i in range(len(sharded)) if (i // 3) % 2 == 1]
    for i in rank1:
        sharded[i]
    own = range(3 * sharded.stream_length, 6 * sharded.stream_length + 1)
    assert recording.reads and all(start in own and stop - 1 in own for start, stop in recording.reads)
    assert all(stop - start == 6 for start, stop in recording.reads)

    blocks = TokenBlocks(mapped, block_size=4)
    assert blocks.input_ids is mapped and blocks[3].tokens.tolist() == list(range(12, 17))


def test_scoring_a_memory_map_equals_scoring_the_tensor(tiny_model, tmp_path):
    ids = torch.randint(0, 64, (301,))
    ids.numpy().astype(np.uint16).tofile(tmp_path / "ids.bin")
    mapped = np.memmap(tmp_path / "ids.bin", dtype=np.uint16, mode="r")
    expected = score_stream(tiny_model, ids, window=32)
    got = score_stream(tiny_model, mapped, window=32)
    assert got.num_tokens == expected.num_tokens == 300
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-6)
