"""The data layer: reading and splitting text, word counts, cached tokenization, blocks and BPTT streams.

The stream tests check exact token continuity: row i of batch k+1 starts where row i of batch k ended, on one
process and on each of two processes (accelerate's batch dealing), and through the Trainer's own dataloader.
"""

import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from conftest import REPO_ROOT
from torch.utils.data import DataLoader, SequentialSampler
from transformers import AutoTokenizer

from modeling_lstmlm.data import (
    BPTTStreams,
    DataSource,
    LMCollator,
    TokenBlocks,
    count_words,
    load_split_texts,
    load_splits,
    parse_line_range,
    read_text,
    select_lines,
    split_lines,
    tokenize_documents,
    tokenize_text,
)

TOKENIZER_DIR = REPO_ROOT / "tokenizer"
needs_tokenizer = pytest.mark.skipif(
    not (TOKENIZER_DIR / "tokenizer.json").is_file(), reason="the committed tokenizer/ folder is missing"
)


@pytest.fixture(scope="module")
def tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip("the committed tokenizer/ folder is missing")
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


# -- reading and splitting --------------------------------------------------------------------------------------------


def test_read_text_missing_file_is_oserror(tmp_path):
    with pytest.raises(OSError, match="not found: .*nope.txt"):
        read_text(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [b"", b"  \n\n\t"], ids=["empty", "whitespace-only"])
def test_read_text_empty_file_is_valueerror(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="empty.txt is empty"):
        read_text(path)


def test_read_text_rejects_non_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_text(path)


def test_split_and_select_lines():
    text = "a\nb b\n\nc"
    assert split_lines(text) == ["a\n", "b b\n", "\n", "c"]
    assert split_lines("x\ny\n") == ["x\n", "y\n"]
    assert split_lines("one\r\ntwo\rthree\n") == ["one\r\n", "two\rthree\n"]  # only \n ends a line
    assert select_lines(text, 1, 3) == "b b\n\n"
    assert select_lines(text, 2) == "\nc"
    with pytest.raises(ValueError, match=r"Line range \[2, 9\) is outside the text, which has 4 lines"):
        select_lines(text, 2, 9)


@pytest.mark.parametrize(
    "spec, expected", [("0:36000", (0, 36000)), ("38000:", (38000, -1)), (":10", (0, 10))], ids=["both", "open", "to"]
)
def test_parse_line_range(spec, expected):
    assert parse_line_range(spec) == expected


@pytest.mark.parametrize("spec", ["10", "5:2", "a:b", "1:2:3"], ids=["no-colon", "reversed", "letters", "two-colons"])
def test_parse_line_range_rejects(spec):
    with pytest.raises(ValueError, match="line range"):
        parse_line_range(spec)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", 0),
        ("the cat sat\n", 4),  # 3 words + 1 line end
        ("the cat\nsat", 5),  # a last line without newline still ends
        ("a  b\t c\n\n", 5),  # runs of whitespace; an empty line is one <eos>
        (" = Title = \n", 4),
    ],
    ids=["empty", "one-line", "no-final-newline", "blank-line", "wikitext-heading"],
)
def test_count_words_follows_word_language_model(text, words):
    assert count_words(text) == words


def test_line_split_of_one_file_is_contiguous(tmp_path):
    lines = [f"line {i}\n" for i in range(100)]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(lines))
    source = DataSource(train_files=[str(path)], train_lines="0:80", validation_lines="80:90", test_lines="90:100")
    splits = load_split_texts(source)
    assert splits == {
        "train": ["".join(lines[:80])],
        "validation": ["".join(lines[80:90])],
        "test": ["".join(lines[90:])],
    }


def test_validation_is_held_out_from_the_end_when_missing(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"l{i}\n" for i in range(40)))
    splits = load_split_texts(DataSource(train_files=[str(path)], validation_split_percentage=10))
    assert splits["validation"] == ["l36\nl37\nl38\nl39\n"]
    assert splits["train"][0].endswith("l35\n") and "l36" not in splits["train"][0]
    assert "test" not in splits


def test_data_source_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of `train_files`"):
        load_split_texts(DataSource())
    with pytest.raises(OSError, match="missing.txt"):
        load_split_texts(DataSource(train_files=[str(tmp_path / "missing.txt")]))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_split_texts(DataSource(train_files=[str(empty)]))


def test_local_dataset_folder_through_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "train.txt").write_text(" = A = \n\nthe cat sat\non the mat\n")
    (folder / "validation.txt").write_text("a dog\n")
    splits = load_split_texts(DataSource(dataset_name=str(folder), rows_are_lines=True))
    assert splits["train"] == [" = A = \n\nthe cat sat\non the mat\n"]
    assert splits["validation"] == ["a dog\n"]


# -- tokenization ----------------------------------------------------------------------------------------------------


def test_tokenize_text_prepends_bos_and_caches(tokenizer, tmp_path, monkeypatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    ids = tokenize_text(text, tokenizer, cache_dir=tmp_path)
    expected = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.tolist() == expected
    files = list(tmp_path.glob("tokens-*.npy"))
    assert len(files) == 1 and np.load(files[0]).tolist() == expected

    # The second call reads the cache: a tokenizer that can no longer tokenize is never called.
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenized again"))
    assert tokenize_text(text, tokenizer, cache_dir=tmp_path).tolist() == expected


def test_tokenize_documents_separates_documents_with_bos(tokenizer):
    ids = tokenize_documents(["ab", "cd"], tokenizer)
    bos = tokenizer.bos_token_id
    assert ids.tolist() == [bos, *tokenizer("ab")["input_ids"], bos, *tokenizer("cd")["input_ids"]]


def test_load_splits_counts_words_and_tokens(tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("to be or not\nto be\nthat is\n")
    source = DataSource(train_files=[str(path)], train_lines="0:2", test_lines="2:3", validation_split_percentage=0)
    splits = load_splits(source, tokenizer)
    assert sorted(splits) == ["test", "train"]
    assert splits["train"].num_words == 8  # 6 words + 2 line ends
    assert splits["test"].num_words == 3
    assert splits["test"].input_ids.tolist() == [tokenizer.bos_token_id] + tokenizer("that is\n")["input_ids"]
    assert splits["test"].num_predicted == splits["test"].input_ids.numel() - 1


# -- blocks and streams ----------------------------------------------------------------------------------------------


def test_token_blocks_are_contiguous_and_cover_the_stream():
    blocks = TokenBlocks(torch.arange(10), block_size=3)
    assert len(blocks) == 3
    assert [blocks[i].tokens.tolist() for i in range(3)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    batch = LMCollator()([blocks[0], blocks[2]])
    assert batch["input_ids"].tolist() == [[0, 1, 2], [6, 7, 8]]
    assert batch["labels"].tolist() == batch["input_ids"].tolist()
    assert batch["shift_labels"].tolist() == [[1, 2, 3], [7, 8, 9]]


def test_too_little_text_names_the_needed_length():
    with pytest.raises(ValueError, match="Too little text: 8 tokens, but one block of block_size=8 .* at least 9"):
        TokenBlocks(torch.arange(8), block_size=8)
    with pytest.raises(ValueError, match="Too little text: 20 tokens, but 4 streams .* needs at least 21 tokens"):
        BPTTStreams(torch.arange(20), num_streams=2, block_size=5, num_shards=2)


def _batches(loader):
    return [batch for batch in loader]


def _check_continuity(batches, streams: BPTTStreams, rows):
    """Row i of consecutive batches reads stream rows[i] window after window, with no token skipped or repeated."""
    for i, stream in enumerate(rows):
        inputs = torch.cat([batch["input_ids"][i] for batch in batches])
        targets = torch.cat([batch["shift_labels"][i] for batch in batches])
        start = stream * streams.stream_length
        n = inputs.numel()
        assert inputs.tolist() == streams.input_ids[start : start + n].tolist()
        assert targets.tolist() == streams.input_ids[start + 1 : start + n + 1].tolist()
    for k in range(len(batches) - 1):
        assert batches[k + 1]["input_ids"][:, 0].tolist() == batches[k]["shift_labels"][:, -1].tolist()
        assert batches[k + 1]["bptt_window"] == batches[k]["bptt_window"] + 1
    assert batches[0]["bptt_window"] == 0


def test_bptt_streams_one_process():
    ids = torch.randint(0, 1000, (203,))
    streams = BPTTStreams(ids, num_streams=4, block_size=7)
    assert streams.stream_length == 50 and streams.num_windows == 7 and len(streams) == 28
    loader = DataLoader(streams, batch_size=4, sampler=SequentialSampler(streams), collate_fn=LMCollator())
    batches = _batches(loader)
    assert len(batches) == 7
    _check_continuity(batches, streams, rows=[0, 1, 2, 3])


@pytest.mark.parametrize("process_index", [0, 1], ids=["rank0", "rank1"])
def test_bptt_streams_are_sharded_by_rank(process_index):
    """accelerate deals whole batches round-robin to the processes: each rank must get its own streams, in order."""
    ids = torch.arange(1000)
    streams = BPTTStreams(ids, num_streams=3, block_size=5, num_shards=2)
    loader = DataLoader(streams, batch_size=3, sampler=SequentialSampler(streams), collate_fn=LMCollator())
    sharded = prepare_data_loader(loader, num_processes=2, process_index=process_index, put_on_device=False)
    batches = _batches(sharded)
    assert len(batches) == streams.num_windows
    _check_continuity(batches, streams, rows=[process_index * 3 + i for i in range(3)])


def test_collator_refuses_mixed_windows():
    streams = BPTTStreams(torch.arange(100), num_streams=2, block_size=4)
    with pytest.raises(ValueError, match="mixes windows"):
        LMCollator()([streams[0], streams[2]])
