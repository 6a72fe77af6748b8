"""The project's byte-level BPE tokenizer: training, saving, and the chat template.

The tokenizer is GPT-2 style byte-level BPE with no normalizer, so every string (emoji, CJK, tabs,
`\\r\\n`, runs of spaces) survives `decode(encode(text)) == text`. It is wrapped as a stock
`transformers.PreTrainedTokenizerFast` and saved with a standard `tokenizer_class`, so
`AutoTokenizer.from_pretrained(folder)` loads it without `trust_remote_code`.

Special tokens, added before training so their ids are fixed:

| id | token | role |
|---|---|---|
| 0 | `<|endoftext|>` | bos and eos: separates documents |
| 1 | `<|pad|>` | padding (distinct from eos, so a causal-LM collator keeps the eos labels) |
| 2-4 | `<|system|>`, `<|user|>`, `<|assistant|>` | chat role markers |
| 5 | `<|end|>` | end of a chat turn |

A special-token string typed in plain text (`tokenizer("a <|endoftext|> b")`) is encoded as the special
token, as in GPT-2. For untrusted text pass `split_special_tokens=True` to the tokenizer call, or
`sanitize_control_tokens=True` to `apply_chat_template`; the string is then encoded byte by byte.
Decoding gives back the same string either way.

Example (from the repository root):

>>> from modeling_lstmlm.tokenization import default_tokenizer_files, train_tokenizer
>>> tokenizer = train_tokenizer(default_tokenizer_files("."), vocab_size=512)
>>> tokenizer.decode(tokenizer("Hello,\\tworld 👋").input_ids)
'Hello,\\tworld 👋'
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
# The order fixes the ids: <|endoftext|>=0, <|pad|>=1, <|system|>=2, <|user|>=3, <|assistant|>=4, <|end|>=5.
SPECIAL_TOKENS = (END_OF_TEXT, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN)
NUM_BYTES = 256  # the byte-level alphabet: every byte is a token, so nothing is ever unknown

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MIN_FREQUENCY = 2
# An LSTM has no position limit; this only bounds `truncation=True` calls that give no `max_length`.
MODEL_MAX_LENGTH = 1_048_576

# Each message is `<|role|>\n{content}<|end|>\n`. The `generation` block marks what the assistant writes
# (its content and the closing <|end|>), so `apply_chat_template(..., return_assistant_tokens_mask=True)`
# returns a mask for training on assistant turns only.
CHAT_TEMPLATE = """\
{%- for message in messages -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unknown role ' + message['role'] | tojson + ': expected system, user or assistant') -}}
    {%- endif -%}
    {%- if message['content'] is not string -%}
        {{- raise_exception('Message content must be a string') -}}
    {%- endif -%}
    {{- '<|' + message['role'] + '|>\\n' -}}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}
            {{- message['content'] + '<|end|>' -}}
        {%- endgeneration -%}
    {%- else -%}
        {{- message['content'] + '<|end|>' -}}
    {%- endif -%}
    {{- '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\\n' -}}
{%- endif -%}
"""

# Corpus of the committed tokenizer, relative to the repository root (see data/README.md).
# data/inaugural/2005-Bush.txt is left out: upstream it is not UTF-8 (its dashes and quotes are Big5 bytes).
TOKENIZER_CORPUS_GLOBS = ("data/inaugural/*.txt", "data/tinyshakespeare/input.txt", "data/wikitext-2/valid.txt")
TOKENIZER_CORPUS_EXCLUDED = ("data/inaugural/2005-Bush.txt",)


def default_tokenizer_files(repo_root: str | os.PathLike) -> list[Path]:
    """The committed corpus files the committed tokenizer was trained on, sorted by relative path.

    Args:
        repo_root (`str` or `os.PathLike`): the repository root that holds `data/`.

    Raises:
        FileNotFoundError: if a corpus pattern matches no file under `repo_root`.
    """
    root = Path(repo_root)
    files = []
    for pattern in TOKENIZER_CORPUS_GLOBS:
        matched = [path for path in root.glob(pattern) if path.is_file()]
        if not matched:
            raise FileNotFoundError(f"No tokenizer corpus file matches {pattern!r} under {root}")
        files.extend(path for path in matched if path.relative_to(root).as_posix() not in TOKENIZER_CORPUS_EXCLUDED)
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def _read_corpus(files: Sequence[str | os.PathLike]) -> list[str]:
    texts = []
    for file in files:
        data = Path(file).read_bytes()  # OSError (FileNotFoundError, IsADirectoryError...) names the file
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{file} is not valid UTF-8 (byte {error.start}: {error.reason})") from error
    return texts


def train_tokenizer(
    files: Sequence[str | os.PathLike],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on UTF-8 text files.

    Each file is one training sequence (read whole, so runs of newlines are learnt as they occur).
    Training is deterministic: the same files and arguments give the same vocabulary and merges.

    Args:
        files (`Sequence[str | os.PathLike]`): UTF-8 text files, in the order given.
        vocab_size (`int`, defaults to 8192): final vocabulary size, special tokens and the 256 byte
            tokens included. Training stops earlier if the corpus has no pair left that is frequent enough.
        min_frequency (`int`, defaults to 2): a pair must occur at least this often to be merged.

    Returns:
        `PreTrainedTokenizerFast`: bos = eos = `<|endoftext|>` (id 0), pad = `<|pad|>` (id 1), the chat role
        markers as extra special tokens (ids 2-5) and `CHAT_TEMPLATE` as its chat template.

    Raises:
        OSError: if a file cannot be read (the message names it).
        ValueError: if `files` is empty, a file is not UTF-8, the corpus holds no text, or `vocab_size` /
            `min_frequency` is out of range.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    smallest = NUM_BYTES + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(
            f"`vocab_size` must be an int >= {smallest} ({NUM_BYTES} byte tokens + {len(SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size!r}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"`min_frequency` must be an int >= 1, got {min_frequency!r}")
    if len(files) == 0:
        raise ValueError("`files` must name at least one text file")
    texts = _read_corpus(files)
    if not any(text.strip() for text in texts):
        raise ValueError(f"The tokenizer corpus is empty: {', '.join(str(file) for file in files)} hold no text")

    backend = Tokenizer(models.BPE())
    # No normalizer and no prefix space: the byte-level mapping is lossless, so decode(encode(s)) == s.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT, END_OF_TURN],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,  # True would turn "don 't" into "don't" on decode
        chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(
    tokenizer: PreTrainedTokenizerFast,
    out_dir: str | os.PathLike,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Save `tokenizer` (and `extra_files`, name -> text) to `out_dir` without leaving half-written files.

    Everything is written to a temporary folder next to `out_dir` first. A new `out_dir` is then created by
    one rename; in an existing one each file is replaced by its own rename (other files there are kept).
    If saving fails, `out_dir` is left as it was.

    Args:
        tokenizer (`PreTrainedTokenizerFast`): the tokenizer to save.
        out_dir (`str` or `os.PathLike`): the folder to write; `AutoTokenizer.from_pretrained(out_dir)` loads it.
        extra_files (`Mapping[str, str]`, *optional*): more files to write beside the tokenizer's, as text.

    Returns:
        `Path`: `out_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            if Path(name).name != name:
                raise ValueError(f"`extra_files` names must be plain file names, got {name!r}")
            (staging / name).write_text(text, encoding="utf-8")
        if not out_dir.exists():
            staging.rename(out_dir)
            return out_dir
        if not out_dir.is_dir():
            raise NotADirectoryError(f"{out_dir} exists and is not a directory")
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
