"""The committed byte-level BPE tokenizer (tokenizer/), its training code and scripts/train_tokenizer.py."""

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_lstmlm.tokenization import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    default_tokenizer_files,
    save_tokenizer,
    train_tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO_ROOT / "tokenizer"
SCRIPT = REPO_ROOT / "scripts" / "train_tokenizer.py"
SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak."
# The committed tokenizer's ids for SAMPLE; a retrained tokenizer must give the same.
SAMPLE_IDS = [1131, 2278, 31, 204, 4569, 337, 3207, 712, 1583, 17, 1051, 374, 922, 19]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\nthe dog sat on the log.\n" * 20, encoding="utf-8")
    return train_tokenizer([corpus], vocab_size=300)


ODD_STRINGS = {
    "emoji": "🙂 👋🏽 family 👨\u200d👩\u200d👧",
    "cjk": "世界 こんにちは 한국어",
    "tabs": "\t\t x",
    "crlf": "a\r\nb",
    "leading-spaces": "  leading",
    "trailing-spaces": "trailing  ",
    "repeated-spaces": "a     b\n\n\n c",
    "apostrophe": "don't",
    "space-before-punctuation": "isn 't , so . ( yes )",
    "special-token-string": "<|endoftext|> literal?",
    "role-marker-string": "a<|end|>b <|user|>",
    "control-characters": "\x00\x07\x1b[0m\x7f",
    "nbsp-zero-width": "x\u00a0y\u200bz\ufeff",
    "combining-accent": "e\u0301 é",
    "byte-level-glyphs": "Ġ Ċ ĉ",
    "empty": "",
}


@pytest.mark.parametrize("text", ODD_STRINGS.values(), ids=ODD_STRINGS.keys())
def test_decode_encode_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.decode(tokenizer(text, split_special_tokens=True).input_ids) == text


def test_special_token_string_typed_in_text(tokenizer):
    # Default (as in GPT-2): a special-token string in plain text becomes that special token.
    ids = tokenizer("a <|endoftext|> b").input_ids
    assert ids == tokenizer("a ").input_ids + [0] + tokenizer(" b").input_ids
    # For untrusted text, split_special_tokens=True encodes it as ordinary bytes.
    assert min(tokenizer("a <|endoftext|> b", split_special_tokens=True).input_ids) >= len(SPECIAL_TOKENS)


def test_committed_tokenizer_loads_as_stock_fast_tokenizer(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and tokenizer.is_fast
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4, 5]
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 0, 1)
    assert tokenizer.extra_special_tokens == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert len(tokenizer) == 8192
    assert tokenizer(SAMPLE).input_ids == SAMPLE_IDS  # no bos/eos added by default
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "TokenizersBackend" and "auto_map" not in config
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_default_tokenizer_files():
    paths = [path.relative_to(REPO_ROOT).as_posix() for path in default_tokenizer_files(REPO_ROOT)]
    assert paths == sorted(paths) and len(paths) == 60
    assert paths[0] == "data/inaugural/1789-Washington.txt"
    assert paths[-2:] == ["data/tinyshakespeare/input.txt", "data/wikitext-2/valid.txt"]
    assert "data/inaugural/2005-Bush.txt" not in paths  # not UTF-8 upstream


def _content(folder: Path) -> dict:
    """What a tokenizer folder means, parsed (vocab, merges, special tokens, pipeline, config, template)."""
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    training = json.loads((folder / "tokenizer_training.json").read_text(encoding="utf-8"))
    for key in ("tokenizers_version", "transformers_version"):
        training.pop(key)
    return {
        "vocab": tokenizer_json["model"]["vocab"],
        "merges": tokenizer_json["model"]["merges"],
        "added_tokens": tokenizer_json["added_tokens"],
        "pipeline": [tokenizer_json[key] for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder")],
        "config": json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")),
        "chat_template": (folder / "chat_template.jinja").read_text(encoding="utf-8"),
        "training": training,
    }


def test_retraining_with_script_defaults_reproduces_committed_tokenizer(tmp_path, tokenizer):
    out = tmp_path / "tokenizer"
    subprocess.run([sys.executable, str(SCRIPT), "--output_dir", str(out)], check=True, capture_output=True)
    # Training was byte-for-byte deterministic in every run we tried (tokenizers 0.23.3, 1-3 threads), but
    # other library versions may serialise differently: compare the parsed content, and bytes only when
    # the versions match the ones that wrote the committed folder.
    assert _content(out) == _content(TOKENIZER_DIR)
    assert AutoTokenizer.from_pretrained(out)(SAMPLE).input_ids == tokenizer(SAMPLE).input_ids == SAMPLE_IDS
    new = json.loads((out / "tokenizer_training.json").read_text(encoding="utf-8"))
    old = json.loads((TOKENIZER_DIR / "tokenizer_training.json").read_text(encoding="utf-8"))
    if all(new[key] == old[key] for key in ("tokenizers_version", "transformers_version")):
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            assert (out / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye?"},
    {"role": "assistant", "content": " See you\n"},
]


def test_chat_template_renders_exact_string(tokenizer):
    rendered = tokenizer.apply_chat_template(MESSAGES[:4], tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n"
        "<|assistant|>\nHello.<|end|>\n<|user|>\nBye?<|end|>\n<|assistant|>\n"
    )
    assert tokenizer.apply_chat_template(MESSAGES[1:2], tokenize=False) == "<|user|>\nHi!<|end|>\n"


def test_chat_role_markers_are_single_special_tokens(tokenizer):
    for marker, token_id in zip(SPECIAL_TOKENS[2:], [2, 3, 4, 5], strict=True):
        assert tokenizer(marker).input_ids == [token_id]
    ids = tokenizer.apply_chat_template(MESSAGES[:4], add_generation_prompt=True, return_dict=False)
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [2, 5, 3, 5, 4, 5, 3, 5, 4]


def test_chat_template_rejects_unknown_role(tokenizer):
    with pytest.raises(jinja2.TemplateError, match="Unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_tokens_mask_covers_assistant_content_and_end(tokenizer):
    out = tokenizer.apply_chat_template(MESSAGES, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, keep in zip(out["input_ids"], out["assistant_masks"], strict=True) if keep]
    expected = tokenizer("Hello.<|end|>").input_ids + tokenizer(" See you\n<|end|>").input_ids
    assert masked == expected
    assert tokenizer.decode(masked) == "Hello.<|end|> See you\n<|end|>"


def test_sanitize_control_tokens_keeps_user_markers_as_text(tokenizer):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "say <|end|> now"}], sanitize_control_tokens=True, return_dict=False
    )
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [3, 5]
    assert tokenizer.decode(ids) == "<|user|>\nsay <|end|> now<|end|>\n"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make_files", "kwargs", "error", "match"),
    [
        (lambda tmp: [tmp / "does-not-exist.txt"], {}, OSError, "does-not-exist.txt"),
        (lambda tmp: [_write(tmp / "empty.txt", b"")], {}, ValueError, "empty"),
        (lambda tmp: [_write(tmp / "big5.txt", b"a\xa1Xb")], {}, ValueError, "big5.txt is not valid UTF-8"),
        (lambda tmp: [], {}, ValueError, "`files`"),
        (lambda tmp: [_write(tmp / "ok.txt", b"hello")], {"vocab_size": 261}, ValueError, "`vocab_size`"),
        (lambda tmp: [_write(tmp / "ok.txt", b"hello")], {"min_frequency": 0}, ValueError, "`min_frequency`"),
    ],
    ids=["missing-file", "empty-file", "not-utf8", "no-files", "vocab-too-small", "min-frequency-zero"],
)
def test_train_tokenizer_rejects_bad_input(tmp_path, make_files, kwargs, error, match):
    with pytest.raises(error, match=match):
        train_tokenizer(make_files(tmp_path), **kwargs)


def test_save_tokenizer_failure_leaves_nothing(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="plain file names"):
        save_tokenizer(tiny_tokenizer, tmp_path / "out", extra_files={"../escape.txt": "x"})
    assert list(tmp_path.iterdir()) == []


def test_save_tokenizer_into_existing_folder_replaces_its_files(tmp_path, tiny_tokenizer):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    (tmp_path / "out" / "tokenizer.json").write_text("stale")
    save_tokenizer(tiny_tokenizer, tmp_path / "out", extra_files={"notes.txt": "hi"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    assert (tmp_path / "out" / "notes.txt").read_text() == "hi"
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert reloaded(SAMPLE).input_ids == tiny_tokenizer(SAMPLE).input_ids
    assert len(reloaded) == len(tiny_tokenizer)


def test_script_smoke_leaves_committed_tokenizer_alone():
    before = (TOKENIZER_DIR / "tokenizer.json").read_bytes()
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "smoke check passed" in result.stdout
    assert (TOKENIZER_DIR / "tokenizer.json").read_bytes() == before
