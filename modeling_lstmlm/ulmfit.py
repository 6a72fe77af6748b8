"""ULMFiT-style transfer (Howard & Ruder 2018) with the stock `Trainer`, for the LSTM and for any causal LM beside it.

The three stages:

1. a language model on general English (`train_language_model`, once);
2. the same language model fine-tuned on the unlabeled target-domain text (`train_language_model` again, from the
   first model), after `remove_contaminated` has dropped every pretraining document that contains a test sentence;
3. a classifier (`AutoModelForSequenceClassification` from the fine-tuned LM folder; the LSTM with concat pooling)
   trained by `train_classifier` with
   - discriminative learning rates (`layer_groups`, `discriminative_optimizer`): the top group (the head) gets `lr`,
     each group below it `lr / 2.6` of the one above;
   - a slanted-triangular schedule (`slanted_triangular`: a linear rise over the first `cut_frac` of the steps to
     `lr`, then a linear fall to `lr / ratio`);
   - gradual unfreezing (`GradualUnfreezingCallback`): only the top group trains at first, and one more group from
     the top is unfrozen every `unfreeze_every` steps.

Layer groups, bottom to top: the embeddings; each recurrent layer (`model.layers.i`) or transformer block
(`transformer.h.i`); everything else (projection, final norm, the head).
"""

from __future__ import annotations

import math
import os
import re
import time
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from .data import BPTTStreams, LMCollator, TokenBlocks
from .training import LMTrainer

_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|wpe)\.")


# ---------------------------------------------------------------------------------------------------------------------
# Contamination


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def remove_contaminated(documents: Sequence[str], test_sentences: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Drop every document that contains a test sentence (compared lower-cased, whitespace collapsed).

    Returns `(kept_documents, report)` with `report = {"documents": n, "dropped_documents": d,
    "test_sentences_found": s}` (`s` test sentences occurred in at least one document). After this, no test sentence
    appears in the kept text (`s` is counted before dropping).
    """
    normalized = [_normalize(doc) for doc in documents]
    starts, offset = [], 0
    for doc in normalized:
        starts.append(offset)
        offset += len(doc) + 1
    haystack = "\n".join(normalized)
    dropped, found = set(), 0
    for sentence in {_normalize(s) for s in test_sentences if s.strip()}:
        position, hit = haystack.find(sentence), False
        while position != -1:
            hit = True
            dropped.add(bisect_right(starts, position) - 1)
            position = haystack.find(sentence, position + 1)
        found += hit
    kept = [doc for i, doc in enumerate(documents) if i not in dropped]
    return kept, {"documents": len(documents), "dropped_documents": len(dropped), "test_sentences_found": found}


# ---------------------------------------------------------------------------------------------------------------------
# Discriminative learning rates, slanted-triangular schedule, gradual unfreezing


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The model's parameters in groups, bottom to top: embeddings, one group per numbered layer or block, then the
    rest (projection, final norm, head). Empty groups are left out.

    Raises:
        ValueError: a model with no numbered layers (`layers.i.` or `h.i.` in its parameter names).
    """
    embeddings, layers, top = [], {}, []
    for name, parameter in model.named_parameters():
        layer = _LAYER.search(name)
        if layer is not None:
            layers.setdefault(int(layer.group(1)), []).append(parameter)
        elif _EMBEDDING.search(name):
            embeddings.append(parameter)
        else:
            top.append(parameter)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no numbered layers (`layers.i.` or `h.i.`) to group")
    groups = [embeddings] + [layers[i] for i in sorted(layers)] + [top]
    return [group for group in groups if group]


def discriminative_optimizer(
    groups: list[list[nn.Parameter]],
    lr: float,
    decay: float = 2.6,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.7, 0.99),
) -> torch.optim.AdamW:
    """AdamW with one parameter group per layer group: the top group at `lr`, group `i` below it at
    `lr / decay**i` (ULMFiT's 2.6 and Adam betas (0.7, 0.99) by default)."""
    top = len(groups) - 1
    param_groups = [{"params": group, "lr": lr / decay ** (top - i)} for i, group in enumerate(groups)]
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)


def slanted_triangular(
    optimizer: torch.optim.Optimizer, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """ULMFiT's slanted triangular learning rate on each group's base rate: at step `t` of `T`, with
    `cut = floor(T * cut_frac)`, `p = t / cut` while `t < cut`, else `1 - (t - cut) / (T - cut)`; the factor is
    `(1 + p * (ratio - 1)) / ratio` (from `1 / ratio` up to 1 at `cut`, back down to `1 / ratio` at `T`)."""
    if total_steps < 1:
        raise ValueError(f"`total_steps` must be >= 1, got {total_steps}")
    cut = max(1, math.floor(total_steps * cut_frac))

    def factor(step: int) -> float:
        p = step / cut if step < cut else 1 - (step - cut) / max(1, total_steps - cut)
        return (1 + max(0.0, p) * (ratio - 1)) / ratio

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GradualUnfreezingCallback(TrainerCallback):
    """Trains only the top layer group at first and unfreezes one more group, from the top down, every
    `unfreeze_every` optimizer steps (a frozen group has `requires_grad=False`, so AdamW skips it).
    `unfrozen_history` records `(step, number of unfrozen groups)` at each change."""

    def __init__(self, groups: list[list[nn.Parameter]], unfreeze_every: int):
        if unfreeze_every < 1:
            raise ValueError(f"`unfreeze_every` must be >= 1, got {unfreeze_every}")
        self.groups, self.unfreeze_every = groups, unfreeze_every
        self.unfrozen = 0
        self.unfrozen_history: list[tuple[int, int]] = []

    def _set(self, step: int) -> None:
        unfrozen = min(len(self.groups), 1 + step // self.unfreeze_every)
        if unfrozen != self.unfrozen:
            for i, group in enumerate(self.groups):
                for parameter in group:
                    parameter.requires_grad_(i >= len(self.groups) - unfrozen)
            self.unfrozen = unfrozen
            self.unfrozen_history.append((step, unfrozen))

    def on_train_begin(self, args, state, control, **kwargs):
        self._set(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._set(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        for group in self.groups:
            for parameter in group:
                parameter.requires_grad_(True)


# ---------------------------------------------------------------------------------------------------------------------
# The stages


def _training_arguments(output_dir, batch_size: int, seed: int, **kwargs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )


def train_language_model(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    output_dir: str | os.PathLike,
    minutes: float | None = None,
    max_steps: int = -1,
    learning_rate: float = 3e-3,
    batch_size: int = 20,
    block_size: int = 64,
    stateful: bool = False,
    warmup_steps: int = 50,
    max_grad_norm: float = 0.25,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> dict:
    """Train (or fine-tune) a causal LM on one token stream with `LMTrainer`, for `minutes` of wall time (the linear
    schedule decays on elapsed time) or `max_steps`, and save it to `output_dir`.

    `stateful=True` (the LSTM) reads the stream as `batch_size` contiguous streams with the state carried between
    windows (truncated BPTT); otherwise (GPT-2) shuffled blocks of `block_size` tokens. Returns `{"steps", "seconds",
    "tokens"}`.
    """
    if stateful:
        dataset = BPTTStreams(input_ids, num_streams=batch_size, block_size=block_size)
    else:
        dataset = TokenBlocks(input_ids, block_size)
    args = _training_arguments(
        output_dir,
        batch_size,
        seed,
        num_train_epochs=1000 if minutes is not None else 1,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=warmup_steps,
        max_grad_norm=max_grad_norm,
        weight_decay=weight_decay,
        logging_steps=50,
    )
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=LMCollator(),
        stateful_bptt=stateful,
        max_train_minutes=minutes,
    )
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    trainer.save_model(str(output_dir))
    return {
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "tokens": trainer.state.global_step * batch_size * block_size,
        "last_loss": next((log["loss"] for log in reversed(trainer.state.log_history) if "loss" in log), None),
    }


def train_classifier(
    model: PreTrainedModel,
    tokenizer,
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    output_dir: str | os.PathLike,
    learning_rate: float = 4e-3,
    num_epochs: float = 3.0,
    unfreeze_epochs: float = 1.0,
    batch_size: int = 32,
    max_length: int = 80,
    lr_decay: float = 2.6,
    weight_decay: float = 0.01,
    seed: int = 0,
    max_steps: int | None = None,
) -> dict:
    """Fine-tune a sequence classifier on `train` (`(text, label id)` pairs) ULMFiT's way with the stock `Trainer`
    and score `test`: discriminative rates (`lr_decay` per group down from `learning_rate` at the head), a
    slanted-triangular schedule over all steps, and gradual unfreezing that reaches the bottom group after
    `unfreeze_epochs` epochs. Texts are truncated to `max_length` tokens; batches are padded on the right.

    Returns `{"accuracy", "steps", "seconds", "unfreezing": [(step, groups unfrozen), ...]}`.
    """
    from datasets import Dataset

    tokenizer.padding_side = "right"

    def encode(pairs):
        data = Dataset.from_dict({"text": [t for t, _ in pairs], "label": [int(y) for _, y in pairs]})
        return data.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
            batched=True,
            remove_columns=["text"],
        )

    train_data, test_data = encode(train), encode(test)
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    total_steps = max_steps if max_steps is not None else max(1, round(num_epochs * steps_per_epoch))
    groups = layer_groups(model)
    unfreeze_every = max(1, round(unfreeze_epochs * steps_per_epoch / max(1, len(groups) - 1)))
    unfreezing = GradualUnfreezingCallback(groups, unfreeze_every)
    optimizer = discriminative_optimizer(groups, learning_rate, decay=lr_decay, weight_decay=weight_decay)
    scheduler = slanted_triangular(optimizer, total_steps)
    args = _training_arguments(output_dir, batch_size, seed, max_steps=total_steps, logging_steps=50)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        data_collator=DataCollatorWithPadding(tokenizer),
        optimizers=(optimizer, scheduler),
        callbacks=[unfreezing],
    )
    start = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - start
    output = trainer.predict(test_data)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == np.asarray(output.label_ids)))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return {
        "accuracy": accuracy,
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "unfreezing": unfreezing.unfrozen_history,
    }


__all__ = [
    "GradualUnfreezingCallback",
    "discriminative_optimizer",
    "layer_groups",
    "remove_contaminated",
    "slanted_triangular",
    "train_classifier",
    "train_language_model",
]
