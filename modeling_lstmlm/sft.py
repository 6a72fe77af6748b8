"""Supervised fine-tuning for chat, instructions and translation: one recipe, three kinds of rows.

Every example becomes a list of chat messages and is rendered by the tokenizer's chat template
(`<|role|>\\n{content}<|end|>\\n` per message; see `modeling_lstmlm/tokenization.py`):

- chat: a `messages` column of `{"role", "content"}` lists (system / user / assistant);
- instructions: `prompt` / `response` columns -> one user turn and one assistant turn (optional system prompt);
- translation: `source` / `target` columns -> a user turn `"{instruction}\\n{source}"` and the target as the reply.

`tokenize_conversation` labels only what the assistant writes (its content and the closing `<|end|>`, the span the
template marks with `{% generation %}`); every other token is -100, so the loss never asks the model to predict a
prompt. The model shifts the labels itself, so `labels` lines up with `input_ids`. Batches are either padded per
batch (`SFTCollator`) or packed: `pack_examples` joins the examples, separated by `<|endoftext|>` (label -100), and
cuts the stream into blocks of `block_size` tokens; the LSTM state then runs across examples inside a block, and a
conversation cut at a block edge continues from a zero state.

`generate_replies` answers a batch of conversations (left padding, greedy, stopping at `<|end|>`), and
`translation_metrics` scores translations with sacreBLEU (BLEU and chrF).

Example:

```python
>>> from transformers import AutoTokenizer
>>> from modeling_lstmlm.sft import SFTCollator, tokenize_conversation
>>> tokenizer = AutoTokenizer.from_pretrained("tokenizer")
>>> messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
>>> example = tokenize_conversation(tokenizer, messages)
>>> batch = SFTCollator(pad_token_id=tokenizer.pad_token_id)([example])
```
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.utils import logging

from ._extras import require

_datasets = require("datasets", "apps", "Chat and translation fine-tuning (modeling_lstmlm.sft)")
Dataset, DatasetDict, load_dataset = _datasets.Dataset, _datasets.DatasetDict, _datasets.load_dataset

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
END_OF_TURN = "<|end|>"
DEFAULT_TRANSLATION_INSTRUCTION = "Translate into the target language:"
_FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------------------------------------------------------------
# Rows -> messages


def _has(example: dict, name: str) -> bool:
    value = example
    for key in name.split("."):
        if not hasattr(value, "keys") or key not in value:
            return False
        value = value[key]
    return value is not None


def to_messages(
    example: dict,
    task: str = "chat",
    messages_column: str = "messages",
    prompt_column: str = "prompt",
    response_column: str = "response",
    source_column: str = "source",
    target_column: str = "target",
    system_prompt: str | None = None,
    instruction: str = DEFAULT_TRANSLATION_INSTRUCTION,
) -> list[dict[str, str]]:
    """The chat messages of one dataset row.

    `task="chat"` reads `messages_column` when the row has it, else `prompt_column` / `response_column`;
    `task="translation"` reads `source_column` / `target_column` (the target may be None, for a prompt to answer).
    `system_prompt`, when given, is put first unless the conversation already starts with a system message.
    `source_column` / `target_column` may name a nested field with a dot (`translation.en` for WMT-style rows).

    Raises:
        ValueError: an unknown task, a missing column (the message names it and lists the row's columns), or
            messages that are not `{"role", "content"}` dicts with a known role and string content.
    """
    if task not in ("chat", "translation"):
        raise ValueError(f"`task` must be 'chat' or 'translation', got {task!r}")

    def column(name):
        # A dotted name reads a nested field: `translation.en` in WMT-style rows {"translation": {"en": ..., ...}}.
        value = example
        for key in name.split("."):
            if not hasattr(value, "keys") or key not in value:
                raise ValueError(f"The row has no column {name!r}; columns: {sorted(example.keys())}")
            value = value[key]
        return value

    if task == "translation":
        source = column(source_column)
        target = column(target_column) if _has(example, target_column) else None
        messages = [{"role": "user", "content": f"{instruction}\n{source}"}]
        if target is not None:
            messages.append({"role": "assistant", "content": target})
    elif messages_column in example and example[messages_column] is not None:
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in column(messages_column)]
    else:
        messages = [{"role": "user", "content": column(prompt_column)}]
        response = example.get(response_column)
        if response is not None:
            messages.append({"role": "assistant", "content": response})
    if system_prompt is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    for message in messages:
        if message["role"] not in ROLES or not isinstance(message["content"], str):
            raise ValueError(f"Each message must be {{'role': one of {ROLES}, 'content': str}}, got {message!r}")
    return messages


# ---------------------------------------------------------------------------------------------------------------------
# Messages -> token ids and labels


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int | None = None) -> dict:
    """Render `messages` with the chat template and label the assistant's tokens only.

    Returns `{"input_ids": [...], "labels": [...]}` of equal length: `labels[i] = input_ids[i]` where the assistant
    writes (each assistant message's content and its `<|end|>`), -100 elsewhere. With `max_length` the ids are cut
    to that many tokens from the end.

    Raises:
        ValueError: no assistant message, a tokenizer whose chat template marks no assistant span (`{% generation %}`),
            or a message that contains one of the tokenizer's special-token strings (it would be read as a control
            token, so a user could forge a turn).
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("A training conversation needs at least one assistant message (nothing to learn otherwise)")
    specials = [t for t in tokenizer.all_special_tokens if t]
    for message in messages:
        found = [t for t in specials if t in message["content"]]
        if found:
            raise ValueError(f"A {message['role']} message contains the special token(s) {found}: {message!r}")
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    if not any(mask):
        raise ValueError(
            "The tokenizer's chat template marks no assistant tokens: it needs {% generation %} ... "
            "{% endgeneration %} around what the assistant writes"
        )
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_sft_dataset(
    dataset: Dataset, tokenizer, max_length: int | None = None, desc: str = "Tokenizing", **message_kwargs
) -> Dataset:
    """Map every row to `input_ids` / `labels` (see `to_messages` for `message_kwargs` and `tokenize_conversation`).

    Rows left with no labelled token after truncation are dropped, with a warning giving their number.
    """

    def tokenize(example):
        return tokenize_conversation(tokenizer, to_messages(example, **message_kwargs), max_length)

    tokenized = dataset.map(tokenize, remove_columns=dataset.column_names, desc=desc)
    kept = tokenized.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]))
    if len(kept) < len(tokenized):
        logger.warning(
            f"Dropped {len(tokenized) - len(kept)} of {len(tokenized)} examples: truncation to {max_length} tokens "
            "left no assistant token"
        )
    return kept


def pack_examples(dataset: Dataset, block_size: int, separator_id: int) -> Dataset:
    """Concatenate tokenized examples (each followed by `separator_id`, labelled -100) and cut blocks of
    `block_size` tokens; the last, shorter block is kept (the collator pads it).

    Raises:
        ValueError: `block_size` < 2 or an empty dataset.
    """
    if block_size < 2:
        raise ValueError(f"`block_size` must be >= 2, got {block_size}")
    if len(dataset) == 0:
        raise ValueError("Cannot pack an empty dataset")
    ids, labels = [], []
    for row in dataset:
        ids.extend([*row["input_ids"], separator_id])
        labels.extend([*row["labels"], IGNORE_INDEX])
    starts = range(0, len(ids), block_size)
    blocks = {
        "input_ids": [ids[i : i + block_size] for i in starts],
        "labels": [labels[i : i + block_size] for i in starts],
    }
    return Dataset.from_dict(blocks)


@dataclass
class SFTCollator:
    """Pads tokenized examples (`input_ids`, `labels`) on the right into a batch.

    Padding positions get `pad_token_id` in `input_ids`, 0 in `attention_mask` (the LSTM skips them) and -100 in
    `labels`. Rows without `labels` are labelled on every real token.

    Args:
        pad_token_id (`int`): the padding token id (`<|pad|>`, 1, for the bundled tokenizer).
        pad_to_multiple_of (`int`, *optional*): round the batch length up to a multiple of this.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, feature in enumerate(features):
            ids = list(feature["input_ids"])
            row_labels = list(feature["labels"]) if feature.get("labels") is not None else ids
            if len(row_labels) != len(ids):
                raise ValueError(f"Row {row} has {len(ids)} input_ids but {len(row_labels)} labels")
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[row, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_sft_dataset(
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    validation_split_name: str = "validation",
) -> DatasetDict:
    """`train` and `validation` splits from JSON/JSONL/CSV files or a Hub dataset, all columns kept.

    Without a validation file (or a Hub split named `validation_split_name`), `held_out_fraction` of train is held
    out, shuffled with `seed`.

    Raises:
        ValueError: neither or both sources, an unknown extension, no train split, or a bad `held_out_fraction`.
        OSError: a missing file.
    """
    if (train_file is None) == (dataset_name is None):
        raise ValueError("Give exactly one of `train_file` (JSON/JSONL/CSV) or `dataset_name` (a Hub dataset)")
    if not 0 < held_out_fraction <= 0.5:
        raise ValueError(f"`held_out_fraction` must be in (0, 0.5], got {held_out_fraction!r}")
    if train_file is not None:
        files = {"train": Path(train_file)}
        if validation_file is not None:
            files["validation"] = Path(validation_file)
        for path in files.values():
            if path.suffix.lower() not in _FILE_FORMATS:
                raise ValueError(f"Data files must end in .json, .jsonl or .csv, got {path}")
            if not path.is_file():
                raise FileNotFoundError(f"Data file not found: {path}")
        formats = {_FILE_FORMATS[path.suffix.lower()] for path in files.values()}
        if len(formats) != 1:
            raise ValueError(f"All data files must have the same format, got {sorted(formats)}")
        raw = load_dataset(formats.pop(), data_files={k: str(v) for k, v in files.items()})
    else:
        raw = load_dataset(dataset_name, dataset_config_name)
        if validation_split_name in raw and validation_split_name != "validation":
            raw["validation"] = raw.pop(validation_split_name)
    if "train" not in raw:
        raise ValueError(f"The dataset has no `train` split (splits: {sorted(raw)})")
    if "validation" in raw:
        return DatasetDict(train=raw["train"], validation=raw["validation"])
    parts = raw["train"].train_test_split(test_size=held_out_fraction, seed=seed, shuffle=True)
    return DatasetDict(train=parts["train"], validation=parts["test"])


def parallel_text_dataset(
    train_files: Sequence[str | os.PathLike],
    validation_files: Sequence[str | os.PathLike] | None = None,
    held_out_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetDict:
    """`train` and `validation` splits with `source` and `target` columns from aligned plain-text files (a
    `(source, target)` pair of paths per split, one sentence a line, as Multi30k's `train.en` / `train.de`); without
    `validation_files`, `held_out_fraction` of train is held out, shuffled with `seed`.

    Raises:
        OSError: a missing file. ValueError: files of different line counts, or an empty line.
    """
    from .translation import read_parallel

    def as_dataset(paths):
        pairs = read_parallel(*paths)
        return Dataset.from_dict({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})

    train = as_dataset(train_files)
    if validation_files is not None:
        return DatasetDict(train=train, validation=as_dataset(validation_files))
    if not 0 < held_out_fraction <= 0.5:
        raise ValueError(f"`held_out_fraction` must be in (0, 0.5], got {held_out_fraction!r}")
    parts = train.train_test_split(test_size=held_out_fraction, seed=seed, shuffle=True)
    return DatasetDict(train=parts["train"], validation=parts["test"])


def shakespeare_dialogues(
    path: str | os.PathLike,
    line_range: tuple[int, int | None] = (0, None),
    turns: int = 2,
    held_out_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetDict:
    """Conversations cut from a play script: `turns` consecutive speeches of one scene alternate user / assistant,
    (speaker names dropped), so the assistant learns to answer a speech with the next one.

    Only speeches lying wholly in lines `[line_range[0], line_range[1])` are used, the windows do not overlap and
    never cross a scene break (two consecutive speeches more than one blank line apart, or a speaker replying to
    himself); the conversations are split into `train` / `validation` with a seeded shuffle.

    Raises:
        ValueError: `turns` < 2 or odd, or too few conversations to split.
    """
    from .classification import parse_speeches  # the speech parser lives with the speaker task

    if turns < 2 or turns % 2:
        raise ValueError(f"`turns` must be an even number >= 2, got {turns}")
    start, end = line_range
    speeches = [
        s
        for s in parse_speeches(Path(path).read_text(encoding="utf-8"))
        if s.start_line >= start and (end is None or s.end_line <= end)
    ]
    conversations, window = [], []
    for speech in speeches:
        if window and (speech.start_line != window[-1].end_line + 1 or speech.speaker == window[-1].speaker):
            window = []
        window.append(speech)
        if len(window) == turns:
            roles = ["user", "assistant"] * (turns // 2)
            conversations.append([{"role": r, "content": s.text} for r, s in zip(roles, window, strict=True)])
            window = []
    if len(conversations) < 2:
        raise ValueError(f"Lines {line_range} give only {len(conversations)} conversations of {turns} speeches")
    random.Random(seed).shuffle(conversations)
    n_valid = max(1, round(held_out_fraction * len(conversations)))
    return DatasetDict(
        train=Dataset.from_dict({"messages": conversations[n_valid:]}),
        validation=Dataset.from_dict({"messages": conversations[:n_valid]}),
    )


_ONES_EN = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
_ONES_EN += "seventeen eighteen nineteen"
_TENS_EN = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ONES_FR = "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize dix-sept "
_ONES_FR += "dix-huit dix-neuf"
_TENS_FR = ["", "", "vingt", "trente", "quarante", "cinquante", "soixante"]


def english_number(n: int) -> str:
    """`n` in 0..999 in English words: 342 -> 'three hundred forty-two'."""
    ones = _ONES_EN.split()
    if n < 20:
        return ones[n]
    if n < 100:
        return _TENS_EN[n // 10] + ("-" + ones[n % 10] if n % 10 else "")
    rest = n % 100
    return f"{ones[n // 100]} hundred" + (f" {english_number(rest)}" if rest else "")


def french_number(n: int) -> str:
    """`n` in 0..999 in French words (traditional spelling): 71 -> 'soixante et onze', 200 -> 'deux cents'."""
    ones = _ONES_FR.split()
    if n < 20:
        return ones[n]
    if n < 70:
        tens, unit = divmod(n, 10)
        if unit == 0:
            return _TENS_FR[tens]
        return _TENS_FR[tens] + (" et un" if unit == 1 else "-" + ones[unit])
    if n < 80:
        return "soixante et onze" if n == 71 else "soixante-" + ones[n - 60]
    if n < 100:
        return "quatre-vingts" if n == 80 else "quatre-vingt-" + ones[n - 80]
    hundreds, rest = divmod(n, 100)
    head = "cent" if hundreds == 1 else f"{ones[hundreds]} cent" + ("s" if rest == 0 else "")
    return head + (f" {french_number(rest)}" if rest else "")


def number_translation_pairs(numbers: Sequence[int]) -> Dataset:
    """A small synthetic parallel corpus (no download needed): English number words -> French number words, with
    columns `source` and `target`, one row per number in 0..999.

    Raises:
        ValueError: a number outside 0..999.
    """
    bad = [n for n in numbers if not 0 <= n <= 999]
    if bad:
        raise ValueError(f"Numbers must be in 0..999, got {bad[:5]}")
    return Dataset.from_dict(
        {"source": [english_number(n) for n in numbers], "target": [french_number(n) for n in numbers]}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Generation and scores


def chat_generation_config(model: PreTrainedModel, tokenizer) -> GenerationConfig:
    """Set `model.generation_config` for chat: stop at `<|end|>` or `<|endoftext|>`, pad with `<|pad|>`, and turn
    `model.config.use_cache` back on (the `Trainer` turns it off). Returns the generation config.

    Raises:
        ValueError: the tokenizer has no `<|end|>` token.
    """
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_id is None or end_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(end_id) != END_OF_TURN:
        raise ValueError(f"The tokenizer has no {END_OF_TURN} token, so a chat turn could not end")
    eos_ids = [end_id] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id not in (None, end_id) else [])
    config = model.generation_config
    config.eos_token_id = eos_ids
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    # Sampling by default (temperature 0.8, top_p 0.95), so a request's temperature means something; greedy with
    # `do_sample=False`.
    config.do_sample, config.temperature, config.top_p, config.top_k = True, 0.8, 0.95, 0
    model.config.use_cache = True
    return config


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel,
    tokenizer,
    conversations: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy assistant replies to `conversations` (each ending with a user turn), decoded without special tokens.

    Batches are left-padded (the model skips the padding, so each reply is the one its conversation gets alone) and
    each reply stops at `<|end|>` or `<|endoftext|>`.
    """
    model.eval()
    end_ids = chat_generation_config(model, tokenizer).eos_token_id
    replies = []
    for i in range(0, len(conversations), batch_size):
        prompts = [
            tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
            for c in conversations[i : i + batch_size]
        ]
        length = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), length), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        replies.extend(tokenizer.batch_decode(out[:, length:], skip_special_tokens=True))
    return [reply.strip() for reply in replies]


def translation_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacreBLEU defaults, one reference per sentence) and the exact-match rate.

    Raises:
        ValueError: different lengths or nothing to score. ImportError: sacrebleu is not installed.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("Nothing to score")
    sacrebleu = require("sacrebleu", "apps", "Translation scores")
    hypotheses, references = list(hypotheses), list(references)
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
        "exact_match": sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True))
        / len(references),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning


@torch.no_grad()
def assistant_token_loss(model: PreTrainedModel, dataset: Dataset, collator: SFTCollator, batch_size: int = 16) -> dict:
    """Mean next-token cross-entropy over the labelled (assistant) tokens of `dataset`, summed token by token (not a
    mean of batch means), with its perplexity and the number of tokens scored."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(dataset), batch_size):
        batch = collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # (batch, seq - 1): the token each position predicts
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        count += int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("The dataset has no labelled token to score")
    loss = total / count
    return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(loss))), "tokens": count}


def run_sft(
    model: PreTrainedModel,
    tokenizer,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    training_args: TrainingArguments,
    eval_batch_size: int = 16,
) -> dict:
    """Fine-tune `model` with the stock `Trainer` on tokenized (`input_ids`, `labels`) rows, padded or packed.

    Scores the assistant tokens of `eval_dataset` (`assistant_token_loss`) before and after training, and leaves the
    model ready for chat (`chat_generation_config`). Returns `{"before": ..., "after": ..., "train": ...}`.
    """
    collator = SFTCollator(pad_token_id=tokenizer.pad_token_id)
    results = {"before": assistant_token_loss(model, eval_dataset, collator, eval_batch_size)}
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator)
    results["train"] = dict(trainer.train().metrics)
    results["after"] = assistant_token_loss(model, eval_dataset, collator, eval_batch_size)
    chat_generation_config(model, tokenizer)
    return results
