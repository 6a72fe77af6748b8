"""Machine translation with a decoder-only language model (the LSTM, or GPT-2 beside it) and with an
encoder-decoder, on aligned sentence files such as Multi30k.

- `read_parallel` / `load_parallel_splits`: aligned source/target files (`{split}.{lang}`, one sentence a line),
  or a Hub dataset with a source and a target column.
- `encode_decoder_only`: one example = `<bos> source <sep> target <eos>`, and its labels, which are -100 on
  `<bos> source <sep>` so that the loss is on the target (and its end) only. `DecoderOnlyCollator` pads on the
  right (labels -100 on padding).
- `encode_seq2seq`: `source <eos>` as the encoder input and `target <eos>` as the labels, for
  `AutoModelForSeq2SeqLM` models (a Marian configuration trained from scratch in the benchmark).
- `translate`: batched beam search with `generate()`, left-padded prompts for decoder-only models; the output is
  decoded without special tokens (the byte-level BPE decodes to the exact string: detokenized output).
- `score_translations`: sacreBLEU corpus BLEU (default settings: cased, 13a tokenization, on detokenized text) and
  chrF. sacrebleu is imported only here (`pip install lstmlm[apps]`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

SEPARATOR = "<|assistant|>"  # a special token of the project's tokenizer: the source ends, the target begins


def read_parallel(source_path: str | os.PathLike, target_path: str | os.PathLike) -> list[tuple[str, str]]:
    """Aligned `(source, target)` pairs from two UTF-8 files with one sentence a line.

    Raises:
        OSError: a missing file. ValueError: different line counts, or an empty line (the message names it).
    """
    sides = []
    for path in (Path(source_path), Path(target_path)):
        if not path.is_file():
            raise FileNotFoundError(f"Parallel text file not found: {path}")
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise ValueError(f"{path}, line {number}: an empty sentence")
        sides.append([line.strip() for line in lines])
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{source_path} has {len(sides[0])} lines but {target_path} has {len(sides[1])}")
    return list(zip(sides[0], sides[1], strict=True))


MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}


def load_parallel_splits(
    source_lang: str,
    target_lang: str,
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split_files: dict[str, str] = MULTI30K_SPLITS,
) -> dict[str, list[tuple[str, str]]]:
    """`{"train", "validation", "test"}` -> `(source, target)` pairs, from `data_dir` (files
    `{split_files[split]}.{lang}`, Multi30k's layout by default) or from a Hub dataset (columns named by the language
    codes, or a `translation` column of `{lang: text}` dicts, as in WMT datasets).

    Raises:
        ValueError: neither or both sources. OSError: a missing file.
    """
    if (data_dir is None) == (dataset_name is None):
        raise ValueError("Give exactly one of `data_dir` (aligned text files) or `dataset_name` (a Hub dataset)")
    if data_dir is not None:
        root = Path(data_dir)
        return {
            split: read_parallel(root / f"{stem}.{source_lang}", root / f"{stem}.{target_lang}")
            for split, stem in split_files.items()
        }
    from datasets import load_dataset

    raw = load_dataset(dataset_name, dataset_config_name)
    splits = {}
    for split, part in raw.items():
        name = {"val": "validation", "valid": "validation"}.get(split, split)
        if name.startswith("test") and "test" in splits:
            continue
        name = "test" if name.startswith("test") else name
        if "translation" in part.column_names:
            pairs = [(row[source_lang], row[target_lang]) for row in part["translation"]]
        else:
            missing = [lang for lang in (source_lang, target_lang) if lang not in part.column_names]
            if missing:
                raise ValueError(f"The {split} split has no column {missing}; columns: {part.column_names}")
            pairs = list(zip(part[source_lang], part[target_lang], strict=True))
        splits[name] = pairs
    for split in ("train", "validation", "test"):
        if split not in splits:
            raise ValueError(f"The dataset has no {split} split (splits: {sorted(raw)})")
    return splits


# ---------------------------------------------------------------------------------------------------------------------
# Encoding


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def separator_id(tokenizer) -> int:
    token_id = tokenizer.convert_tokens_to_ids(SEPARATOR)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"The tokenizer has no {SEPARATOR} special token to separate source and target")
    return token_id


def encode_decoder_only(
    tokenizer, source: str, target: str | None = None, max_length: int = 256, reverse_source: bool = False
) -> dict:
    """`input_ids` = `<bos> source <sep>` (+ `target <eos>` when given) and `labels` (-100 on the prompt part),
    truncating the source, then the target, so that the whole stays within `max_length` tokens. `reverse_source`
    feeds the source's tokens in reverse order (Sutskever et al. 2014: the first source words then sit next to the
    first target words, a short path for a recurrent model); training and `translate` must agree on it."""
    bos, eos, sep = tokenizer.bos_token_id, tokenizer.eos_token_id, separator_id(tokenizer)
    source_ids = _ids(tokenizer, source)
    target_ids = [] if target is None else [*_ids(tokenizer, target), eos]
    budget = max_length - 2
    source_ids = source_ids[: max(1, budget - len(target_ids)) if target is not None else budget]
    if reverse_source:
        source_ids = source_ids[::-1]
    prompt = [bos, *source_ids, sep]
    target_ids = target_ids[: max(0, max_length - len(prompt))]
    return {"input_ids": prompt + target_ids, "labels": [-100] * len(prompt) + target_ids}


def encode_seq2seq(tokenizer, source: str, target: str, max_length: int = 128) -> dict:
    """`input_ids` = `source <eos>` and `labels` = `target <eos>`, each cut to `max_length` tokens."""
    eos = tokenizer.eos_token_id
    return {
        "input_ids": [*_ids(tokenizer, source)[: max_length - 1], eos],
        "labels": [*_ids(tokenizer, target)[: max_length - 1], eos],
    }


@dataclass
class DecoderOnlyCollator:
    """Pads `input_ids` (with `pad_token_id`) and `labels` (with -100) on the right; adds `attention_mask`."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = length - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
            batch["labels"].append(list(f["labels"]) + [-100] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and scoring


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer,
    sources: Sequence[str],
    num_beams: int = 4,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    length_ratio: float = 2.0,
    max_length: int = 256,
    reverse_source: bool = False,
) -> list[str]:
    """Translate `sources` with beam search (`num_beams`; 1 = greedy). A decoder-only model gets the prompts
    `<bos> source <sep>` left-padded; an encoder-decoder the sources. Each output stops at `<eos>` or after
    `max_new_tokens` (default: `length_ratio` times the longest source of the batch, plus 10), and is decoded
    without special tokens, stripped. `reverse_source`: the decoder-only prompts as `encode_decoder_only` builds
    them with it (set it as the model was trained)."""
    model.eval()
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    hypotheses = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        if encoder_decoder:
            rows = [[*_ids(tokenizer, s)[: max_length - 1], eos] for s in chunk]
        else:
            rows = [encode_decoder_only(tokenizer, s, None, max_length, reverse_source)["input_ids"] for s in chunk]
        length = max(len(r) for r in rows)
        if encoder_decoder:  # right padding for the encoder
            ids = [r + [pad] * (length - len(r)) for r in rows]
            mask = [[1] * len(r) + [0] * (length - len(r)) for r in rows]
        else:  # left padding: every prompt ends where generation starts
            ids = [[pad] * (length - len(r)) + r for r in rows]
            mask = [[0] * (length - len(r)) + [1] * len(r) for r in rows]
        ids, mask = torch.tensor(ids, device=model.device), torch.tensor(mask, device=model.device)
        new_tokens = max_new_tokens or int(length_ratio * length) + 10
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=num_beams,
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            early_stopping=True if num_beams > 1 else False,
        )
        generated = output if encoder_decoder else output[:, ids.shape[1] :]
        hypotheses.extend(text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True))
    return hypotheses


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """sacreBLEU corpus BLEU (default settings: cased, 13a tokenization) and chrF (default: character 6-grams,
    beta 2) of detokenized `hypotheses` against one reference each.

    Raises:
        ValueError: different lengths or nothing to score. ImportError: sacrebleu is not installed.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("Nothing to score")
    try:
        import sacrebleu
    except ImportError as error:
        raise ImportError("Translation scores need sacrebleu: pip install 'lstmlm[apps]'") from error
    hypotheses, references = list(hypotheses), list(references)
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": float(bleu.corpus_score(hypotheses, [references]).score),
        "chrf": float(chrf.corpus_score(hypotheses, [references]).score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


__all__ = [
    "DecoderOnlyCollator",
    "MULTI30K_SPLITS",
    "SEPARATOR",
    "encode_decoder_only",
    "encode_seq2seq",
    "load_parallel_splits",
    "read_parallel",
    "score_translations",
    "separator_id",
    "translate",
]
