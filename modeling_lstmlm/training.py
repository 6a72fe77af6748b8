"""Training the LSTM language model with the stock `transformers.Trainer`.

The training loop is the Trainer's; this module adds the few pieces an LSTM language model needs around it:

- `LMTrainer`, a thin `Trainer` subclass for stateful truncated BPTT: with `stateful_bptt=True` and a
  `data.BPTTStreams` dataset, batch k+1 row i continues batch k row i in the token stream, and the (h, c) state at the
  end of a batch is the start of the next one, detached (gradients stop at the window boundary: truncated BPTT, as
  in pytorch/examples word_language_model). The state is reset to zero at the first window of an epoch (and of an
  evaluation), saved in every checkpoint (`bptt_state-rank{r}.safetensors`) and restored by
  `--resume_from_checkpoint`, so an interrupted run ends with the same weights. It also saves models with
  `config.use_cache=True` (the Trainer writes `TrainingArguments.use_cache`, False by default, into the config).
- `TimeBudgetCallback` (stop after N minutes, all processes together) and `plot_loss_curve`.
- `ModelArguments`, `DataArguments`, `RunArguments` and `run_training`: what `scripts/train.py` runs.

Example (stateful BPTT from Python):

```python
>>> from transformers import TrainingArguments
>>> from modeling_lstmlm.data import BPTTStreams, LMCollator
>>> from modeling_lstmlm.training import LMTrainer
>>> args = TrainingArguments("runs/bptt", per_device_train_batch_size=20, learning_rate=20.0, optim="sgd",
...                          max_grad_norm=0.25, num_train_epochs=1)
>>> train = BPTTStreams(train_ids, num_streams=20, block_size=35)
>>> trainer = LMTrainer(model=model, args=args, train_dataset=train, data_collator=LMCollator(), stateful_bptt=True)
>>> trainer.train()
```
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import SequentialSampler
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from ._extras import require
from .configuration_lstmlm import LSTMLMConfig
from .data import (
    BPTTStreams,
    DataSource,
    LMCollator,
    StreamedBPTT,
    TokenBlocks,
    load_splits,
    load_streamed_splits,
    split_documents,
)
from .evaluation import evaluate_split
from .modeling_lstmlm import LSTMLMCache, LSTMLMForCausalLM

logger = logging.get_logger(__name__)

BPTT_STATE_FILE = "bptt_state-rank{rank}.safetensors"
RUN_ARGS_FILE = "run_args.json"
EVAL_RESULTS_FILE = "eval_results.json"
LOSS_CURVE_FILE = "loss_curve.png"


# ---------------------------------------------------------------------------------------------------------------------
# Stateful truncated BPTT with the stock Trainer


class CarriedState:
    """The detached per-layer (h, c) carried between consecutive batches, one slot per phase ("train", "eval")."""

    def __init__(self):
        self.slots: dict[str, list[tuple[torch.Tensor, torch.Tensor]] | None] = {"train": None, "eval": None}

    def get(self, phase: str, batch_size: int):
        state = self.slots.get(phase)
        if state is not None and state[0][0].shape[0] != batch_size:
            raise ValueError(
                f"The carried {phase} state has batch size {state[0][0].shape[0]} but the batch has {batch_size} rows; "
                "stateful BPTT needs every batch to hold the same streams"
            )
        return state

    def set(self, phase: str, state) -> None:
        self.slots[phase] = state

    def save(self, path: str | os.PathLike, phase: str = "train") -> None:
        state = self.slots.get(phase)
        tensors = {}
        if state is not None:
            for i, (h, c) in enumerate(state):
                tensors[f"h.{i}"], tensors[f"c.{i}"] = h.detach().cpu().contiguous(), c.detach().cpu().contiguous()
        save_file(tensors, str(path), metadata={"num_layers": str(0 if state is None else len(state))})

    def load(self, path: str | os.PathLike, device: torch.device, phase: str = "train") -> None:
        tensors = load_file(str(path))
        num_layers = len(tensors) // 2
        self.slots[phase] = (
            [(tensors[f"h.{i}"].to(device), tensors[f"c.{i}"].to(device)) for i in range(num_layers)]
            if num_layers
            else None
        )


class BPTTStateCheckpointCallback(TrainerCallback):
    """Writes the carried training state of this process into each checkpoint folder (read back on resume)."""

    def __init__(self, carried: CarriedState):
        self.carried = carried

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        self.carried.save(folder / BPTT_STATE_FILE.format(rank=args.process_index))
        return control


class LMTrainer(Trainer):
    """The stock `Trainer`, plus stateful truncated BPTT (`stateful_bptt=True`) and generation-ready saving.

    With `stateful_bptt=True`, the train (and eval) datasets must be `data.BPTTStreams` built with
    `num_streams = per_device_{train,eval}_batch_size` and `num_shards = world_size`, and the collator
    `data.LMCollator`. Then:

    - the train sampler is sequential (the streams' order is the data order: shuffling would break them), and
      accelerate's round-robin dealing of batches to processes gives each process its own streams;
    - each batch starts from the state the previous batch of the same phase ended with, detached, or from zero at
      window 0 (the start of an epoch or of an evaluation);
    - with gradient accumulation the micro-batches are consecutive windows, so the state flows through them too;
    - checkpoints hold the carried state (one file per process) and `train(resume_from_checkpoint=...)` restores it.

    Without `stateful_bptt` it is the stock Trainer (shuffled `data.TokenBlocks`, zero state per block).

    With `max_train_minutes`, training stops when the time is up, and a "linear", "cosine" or "constant" learning-rate
    schedule runs on the elapsed fraction of that time instead of steps (after `warmup_steps` steps of linear warmup),
    so the rate reaches its end value when the time does, whatever the speed of the machine. (A resumed run restarts
    the clock.)

    Evaluation without `compute_metrics` only computes the loss (the logits of a language model over a whole eval set
    are not kept).
    """

    TIME_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")

    def __init__(self, *args, stateful_bptt: bool = False, max_train_minutes: float | None = None, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        train_dataset = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
        if isinstance(train_dataset, StreamedBPTT) and training_args is not None and training_args.world_size > 1:
            # A stream has no sampler: by default accelerate's dispatcher reads it on rank 0 and concatenates
            # `num_processes` collated batches (which fails on the `bptt_window` int). Instead each process reads the
            # stream itself and keeps its own rows of every `num_processes` batches (`IterableDatasetShard`): the
            # same round-robin dealing of whole batches as the token file's sampler gets.
            training_args.accelerator_config.dispatch_batches = False
        super().__init__(*args, **kwargs)
        self.stateful_bptt = stateful_bptt
        self.carried_state = CarriedState()
        self.time_budget = None
        if max_train_minutes is not None:
            schedule = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
            if schedule not in self.TIME_SCHEDULES:
                raise ValueError(
                    f"A time budget runs the learning-rate schedule on time: `lr_scheduler_type` must be one of "
                    f"{self.TIME_SCHEDULES}, got {schedule!r}"
                )
            self.time_budget = TimeBudgetCallback(max_train_minutes)
            self.add_callback(self.time_budget)
            if self.pop_callback(ProgressCallback) is not None:  # the bar counts the budget, not the epochs' steps
                self.add_callback(TimeBudgetProgressCallback(self.time_budget))
        if stateful_bptt:
            if self.args.accelerator_config.split_batches:
                raise ValueError("Stateful BPTT deals whole batches to processes: `split_batches` must be False")
            if self.args.label_smoothing_factor:
                raise ValueError("Stateful BPTT takes its targets from `shift_labels`: label smoothing is unsupported")
            self.add_callback(BPTTStateCheckpointCallback(self.carried_state))
            if isinstance(self.train_dataset, StreamedBPTT):  # no sampler to check it in: check it here
                self._check_streams(self.train_dataset, self._train_batch_size, "train")

    # -- data --------------------------------------------------------------------------------------------------------

    def _check_streams(self, dataset, batch_size: int, what: str) -> None:
        if not isinstance(dataset, (BPTTStreams, StreamedBPTT)):
            raise ValueError(
                f"Stateful BPTT needs the {what} dataset to be a BPTTStreams, got {type(dataset).__name__}"
            )
        if dataset.num_streams != batch_size or dataset.num_shards != self.args.world_size:
            raise ValueError(
                f"The {what} BPTTStreams has {dataset.num_streams} streams x {dataset.num_shards} shards, but batches "
                f"have {batch_size} rows on each of {self.args.world_size} processes: build it with "
                f"num_streams={batch_size}, num_shards={self.args.world_size}"
            )

    def _get_train_sampler(self, train_dataset=None):
        if not self.stateful_bptt:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self._check_streams(dataset, self._train_batch_size, "train")
        return SequentialSampler(dataset)

    def _get_eval_sampler(self, eval_dataset):
        if self.stateful_bptt and isinstance(eval_dataset, BPTTStreams):
            self._check_streams(eval_dataset, self.args.eval_batch_size, "eval")
            # Under DDP the DataLoader's default sampler is sequential too, then dealt round-robin by accelerate.
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
        return super()._get_eval_sampler(eval_dataset)

    # -- loss with the carried state ---------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        window = inputs.pop("bptt_window", None)
        if not self.stateful_bptt or window is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        phase = "train" if model.training else "eval"
        config = self.accelerator.unwrap_model(model).config
        state = self.carried_state.get(phase, inputs["input_ids"].shape[0]) if window > 0 else None
        cache = LSTMLMCache(config=config)
        if state is not None:
            for layer_idx, (h, c) in enumerate(state):
                cache.set_state(layer_idx, h, c)
        loss, outputs = super().compute_loss(
            model, {**inputs, "cache": cache, "use_cache": True}, True, num_items_in_batch
        )
        # The next window starts from this state, detached: its backward pass stops here (truncated BPTT), or it
        # would run through every earlier window (and their graphs would never be freed).
        self.carried_state.set(
            phase, [tuple(t.detach().clone() for t in cache.get_state(i)) for i in range(config.num_hidden_layers)]
        )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.compute_metrics is None:
            prediction_loss_only = True
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.time_budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        schedule = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        warmup = self.args.get_warmup_steps(num_training_steps)
        budget = self.time_budget

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            done = budget.fraction()
            if schedule == "linear":
                return max(0.0, 1.0 - done)
            if schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * done))
            return 1.0

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- checkpoints -------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in output_dir={self.args.output_dir} to resume from")
        self.carried_state.set("train", None)
        if resume_from_checkpoint and self.stateful_bptt:
            path = Path(resume_from_checkpoint) / BPTT_STATE_FILE.format(rank=self.args.process_index)
            if path.exists():
                self.carried_state.load(path, self.args.device)
            else:
                logger.warning(
                    f"{path} is missing: the carried BPTT state restarts from zero, so the resumed run will not "
                    "match an uninterrupted one exactly"
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        # The Trainer wrote `TrainingArguments.use_cache` (False by default) into the config; a saved language model
        # must generate with its cache, so save it with use_cache=True and put the training value back.
        model = self.accelerator.unwrap_model(self.model)
        previous = model.config.use_cache
        model.config.use_cache = True
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.use_cache = True
        try:
            super().save_model(output_dir, _internal_call=_internal_call)
        finally:
            model.config.use_cache = previous


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks and the loss curve


class TimeBudgetProgressCallback(ProgressCallback):
    """The Trainer's progress bar, counting the seconds of a time budget (the step count goes in the postfix): with a
    budget, `max_steps` is what the epochs would take, not what the run will do."""

    def __init__(self, budget: TimeBudgetCallback):
        super().__init__()
        self.budget = budget

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=round(self.budget.seconds), unit="s", desc="time budget", dynamic_ncols=True)
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            elapsed = round(self.budget.fraction() * self.budget.seconds)
            self.training_bar.update(elapsed - self.training_bar.n)
            self.training_bar.set_postfix(step=state.global_step, refresh=False)
        self.current_step = state.global_step


class TimeBudgetCallback(TrainerCallback):
    """Stops training once `minutes` have passed since the start of `train()` (all processes stop at the same step)."""

    def __init__(self, minutes: float):
        if minutes <= 0:
            raise ValueError(f"The time budget must be > 0 minutes, got {minutes}")
        self.seconds = minutes * 60
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def fraction(self) -> float:
        """The part of the budget spent so far, in [0, 1] (0 before training starts)."""
        if self.start is None:
            return 0.0
        return min(1.0, (time.monotonic() - self.start) / self.seconds)

    def on_step_end(self, args, state, control, **kwargs):
        stop = time.monotonic() - self.start >= self.seconds
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor(int(stop), device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            control.should_training_stop = True
        return control


def plot_loss_curve(log_history: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Train and eval loss against optimizer steps, from `trainer.state.log_history`, as a PNG."""
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "train", "The loss curve").FigureCanvasAgg
    Figure = require("matplotlib.figure", "train", "The loss curve").Figure

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.set_title(title or "Loss")
    axes.grid(alpha=0.3)
    if train or evals:
        axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# What scripts/train.py runs


@dataclass
class ModelArguments:
    """Which model to train: a new LSTMLM (sizes below) or an existing one to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved model folder or Hub id to fine-tune; omit to train a new model from scratch."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub id (default: the model's own, or the repository's tokenizer/)."},
    )
    hidden_size: int | None = field(default=None, metadata={"help": "LSTM hidden size (new model; default 512)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Number of LSTM layers (default 2)."})
    embedding_size: int | None = field(
        default=None, metadata={"help": "Embedding size (default hidden_size; else the top is projected to it)."}
    )
    tie_word_embeddings: bool | None = field(default=None, metadata={"help": "Tie the output layer to the embedding."})
    embedding_dropout: float | None = field(default=None, metadata={"help": "Dropout on the embeddings (dropouti)."})
    hidden_dropout: float | None = field(default=None, metadata={"help": "Dropout between LSTM layers (dropouth)."})
    output_dropout: float | None = field(default=None, metadata={"help": "Dropout before the output layer."})
    weight_dropout: float | None = field(default=None, metadata={"help": "DropConnect on hidden-to-hidden weights."})
    embedding_row_dropout: float | None = field(
        default=None, metadata={"help": "Drop whole vocabulary rows of the embedding (dropoute)."}
    )
    variational_dropout: bool | None = field(
        default=None, metadata={"help": "Locked dropout: one mask per sequence, shared over time steps."}
    )
    activation_regularization: float | None = field(default=None, metadata={"help": "AR coefficient (alpha)."})
    temporal_activation_regularization: float | None = field(default=None, metadata={"help": "TAR coefficient (beta)."})
    initializer_range: float | None = field(default=None, metadata={"help": "Uniform init range of embedding/head."})

    # Settings that shape the network; they cannot change when fine-tuning.
    SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "embedding_size", "tie_word_embeddings", "initializer_range")

    def config_overrides(self) -> dict:
        names = [name for name in self.__dataclass_fields__ if name not in ("model_name_or_path", "tokenizer_name")]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class DataArguments:
    """Which text to train and evaluate on, and how to cut it."""

    train_file: list[str] | None = field(
        default=None, metadata={"help": "Local UTF-8 text files to train on (each file is one document)."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation text file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test text file."})
    train_lines: str | None = field(
        default=None, metadata={"help": "Lines 'start:end' of the (single) train file to train on, e.g. 0:36000."}
    )
    validation_lines: str | None = field(
        default=None, metadata={"help": "Lines 'start:end' for validation (of validation_file, else the train file)."}
    )
    test_lines: str | None = field(
        default=None, metadata={"help": "Lines 'start:end' for test (of the test file, else the train file)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A dataset on the Hub (via `datasets`), a local dataset folder, or a builder: text, json."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Files for a `datasets` builder (--dataset_name text or json): PATH (train) or SPLIT=PATH, e.g. "
            "train=big.txt validation=valid.txt."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read --dataset_name with load_dataset(..., streaming=True): rows are fetched as they are "
            "tokenized, never all loaded (datasets larger than memory or disk); it needs a validation split or "
            "--validation_split_percentage 0. (--train_file is always read in pieces.) With --no_cache_tokens, "
            "train straight from the stream or the files."
        },
    )
    cache_tokens: bool = field(
        default=True,
        metadata={
            "help": "Tokenize the train split once into a token file under cache_dir (reused by later runs). With "
            "--streaming, --no_cache_tokens trains straight from the stream instead (needs --max_steps)."
        },
    )
    text_column: str = field(default="text", metadata={"help": "The dataset column that holds the text."})
    rows_are_lines: bool = field(
        default=False, metadata={"help": "The dataset's rows are lines of one text (WikiText), not documents."}
    )
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Without validation text, hold out this last percentage of the train text."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence (the BPTT length)."})
    stateful: bool = field(
        default=False,
        metadata={"help": "Stateful truncated BPTT: contiguous streams, (h, c) carried between batches (detached)."},
    )
    eval_window: int = field(
        default=256, metadata={"help": "Tokens per forward pass in the final perplexity evaluation (state carried)."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where tokenized text is cached (default: `cache` next to output_dir)."}
    )

    def data_files_by_split(self) -> list[str] | dict[str, list[str]] | None:
        """`data_files` as `datasets` takes them: a list (all train), or split name -> files for `SPLIT=PATH`."""
        if not self.data_files:
            return None
        if not any("=" in entry for entry in self.data_files):
            return list(self.data_files)
        by_split: dict[str, list[str]] = {}
        for entry in self.data_files:
            split, _, path = entry.rpartition("=")
            by_split.setdefault(split or "train", []).append(path)
        return by_split

    def source(self) -> DataSource:
        return DataSource(
            train_files=self.train_file,
            validation_file=self.validation_file,
            test_file=self.test_file,
            train_lines=self.train_lines,
            validation_lines=self.validation_lines,
            test_lines=self.test_lines,
            dataset_name=self.dataset_name,
            dataset_config_name=self.dataset_config_name,
            data_files=self.data_files_by_split(),
            streaming=self.streaming,
            text_column=self.text_column,
            rows_are_lines=self.rows_are_lines,
            validation_split_percentage=self.validation_split_percentage,
        )


@dataclass
class RunArguments:
    """Settings of the run itself (not of the Trainer)."""

    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many minutes (then evaluate and save as usual); a linear/cosine "
            "learning-rate schedule then runs on elapsed time. Set a large num_train_epochs with it."
        },
    )


def arguments_from_dict(values: dict) -> tuple[ModelArguments, DataArguments, RunArguments, TrainingArguments]:
    """The four argument dataclasses of `scripts/train.py` from a flat dict of its flags (a recipe JSON).

    Raises:
        ValueError: a key is not a flag of `scripts/train.py`.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments))
    return parser.parse_dict(values)


def load_tokenizer(model_args: ModelArguments, default_tokenizer: str | os.PathLike):
    name = model_args.tokenizer_name or model_args.model_name_or_path or str(default_tokenizer)
    return AutoTokenizer.from_pretrained(name)


def build_model(model_args: ModelArguments, tokenizer) -> LSTMLMForCausalLM:
    """A new LSTMLM sized by `model_args` for `tokenizer`, or the model at `model_name_or_path` (its regularisers
    overridden by `model_args`)."""
    overrides = model_args.config_overrides()
    if model_args.model_name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        for name, value in overrides.items():
            if name in ModelArguments.SIZE_FIELDS and getattr(model.config, name) != value:
                raise ValueError(f"`{name}` cannot change when fine-tuning {model_args.model_name_or_path}")
            setattr(model.config, name, value)
        if hasattr(model.config, "_validate"):
            model.config._validate()
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} embeddings"
            )
    else:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        model = LSTMLMForCausalLM(LSTMLMConfig(vocab_size=len(tokenizer), **ids, **overrides))
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    set_sampling_defaults(generation)
    return model


def set_sampling_defaults(generation_config, temperature: float = 0.8, top_p: float = 0.95):
    """Make a saved generation config sample (`do_sample=True`, `temperature`, `top_p`, no top-k), so that a
    request's sampling parameters mean something to `generate()` and to the server (`modeling_lstmlm.serving`):
    without `do_sample`, `generate()` ignores a temperature and `transformers serve` warns that it is invalid.
    `generate(..., do_sample=False)` stays greedy."""
    generation_config.do_sample = True
    generation_config.temperature = temperature
    generation_config.top_p = top_p
    generation_config.top_k = 0
    return generation_config


def build_datasets(splits: dict, data_args: DataArguments, training_args: TrainingArguments, tokenizer=None) -> tuple:
    """The Trainer's train and eval datasets: `BPTTStreams` when stateful, else shuffled `TokenBlocks`; without a
    train split in `splits` (`--streaming --no_cache_tokens`), a `StreamedBPTT` read straight from the stream."""
    if "train" not in splits:
        source = data_args.source()
        documents = split_documents(source)["train"] if source.train_files else load_streamed_splits(source)["train"]
        train = StreamedBPTT(
            documents,
            tokenizer,
            num_streams=training_args.per_device_train_batch_size,
            block_size=data_args.block_size,
            num_shards=training_args.world_size,
        )
    elif data_args.stateful:
        train = BPTTStreams(
            splits["train"].input_ids,
            num_streams=training_args.per_device_train_batch_size,
            block_size=data_args.block_size,
            num_shards=training_args.world_size,
        )
    else:
        train = TokenBlocks(splits["train"].input_ids, data_args.block_size)
    evaluation = None
    if "validation" in splits:
        ids = splits["validation"].input_ids
        if data_args.stateful:
            evaluation = BPTTStreams(
                ids,
                num_streams=training_args.per_device_eval_batch_size,
                block_size=data_args.block_size,
                num_shards=training_args.world_size,
            )
        else:
            evaluation = TokenBlocks(ids, data_args.block_size)
    return train, evaluation


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    run_args: RunArguments | None = None,
    default_tokenizer: str | os.PathLike = "tokenizer",
    extra_callbacks: list | None = None,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Train (or fine-tune) an LSTMLM with the stock Trainer and write the run folder.

    The text is tokenized once into token files under `data_args.cache_dir` (reused by later runs) and trained on
    through memory maps, so a corpus of any size trains in flat memory. `report` gets one line per split (tokens,
    bytes on disk, time; `scripts/train.py` prints them).

    `training_args.output_dir` ends up holding the model (loadable with `AutoModelForCausalLM`), the tokenizer
    (`AutoTokenizer`), the generation config, `run_args.json` (every resolved argument), `eval_results.json`
    (token- and word-level perplexity on validation and test, the whole text scored with the state carried) and
    `loss_curve.png`. Returns the eval results.
    """
    require("accelerate", "train", "Training with the Trainer")
    run_args = run_args or RunArguments()
    output_dir = Path(training_args.output_dir)
    cache_dir = data_args.cache_dir or str(output_dir.resolve().parent / "cache")
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args, default_tokenizer)
    from_stream = data_args.streaming and not data_args.cache_tokens
    if from_stream and training_args.max_steps <= 0:
        raise ValueError(
            "Training straight from a stream (--no_cache_tokens) needs --max_steps: a stream has no length"
        )
    if not data_args.cache_tokens and not data_args.streaming:
        raise ValueError("--no_cache_tokens trains straight from a stream: it needs --streaming")
    with training_args.main_process_first(desc="tokenizing"):
        # Rank 0 tokenizes into token files under cache_dir (bounded memory); the others then map the same files.
        splits = load_splits(
            data_args.source(),
            tokenizer,
            cache_dir=cache_dir,
            show_progress=training_args.process_index == 0 and not training_args.disable_tqdm,
            count_train_words=False,
            tokenize_train=not from_stream,
        )
    if report is not None and training_args.process_index == 0:
        for split in splits.values():
            if split.token_file is not None:
                report(split.token_file.summary())
    model = build_model(model_args, tokenizer)
    train_dataset, eval_dataset = build_datasets(splits, data_args, training_args, tokenizer)
    logger.info(
        f"Data: {', '.join(f'{name} {split.num_tokens:,} tokens' for name, split in splits.items())}; "
        f"model: {model.num_parameters():,} parameters"
    )

    trainer = LMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=LMCollator(),
        processing_class=tokenizer,
        callbacks=list(extra_callbacks or []),
        stateful_bptt=data_args.stateful,
        max_train_minutes=run_args.max_train_minutes,
    )
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = {
            "model": asdict(model_args),
            "data": asdict(data_args) | {"cache_dir": cache_dir},
            "run": asdict(run_args),
            "training": training_args.to_dict(),
            "num_parameters": model.num_parameters(),
            "world_size": training_args.world_size,
            "num_tokens": {name: split.num_tokens for name, split in splits.items()},
            "token_files": {
                name: str(split.token_file.path) for name, split in splits.items() if split.token_file is not None
            },
        }
        (output_dir / RUN_ARGS_FILE).write_text(json.dumps(resolved, indent=2, default=str) + "\n")

    start = time.monotonic()
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.monotonic() - start
    if eval_dataset is not None:
        trainer.evaluate()
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        # The Trainer pickles its arguments next to the model; run_args.json holds them, readable and unpickled.
        (output_dir / "training_args.bin").unlink(missing_ok=True)

    results = {
        "train_loss": train_output.training_loss,
        "train_steps": trainer.state.global_step,
        "train_seconds": train_seconds,
        "train_tokens": trainer.state.global_step
        * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
        * data_args.block_size,
        "num_parameters": model.num_parameters(),
    }
    if trainer.is_world_process_zero():
        plot_loss_curve(trainer.state.log_history, output_dir / LOSS_CURVE_FILE, title=f"Loss: {output_dir.name}")
        eval_model = trainer.accelerator.unwrap_model(trainer.model)
        for name in ("validation", "test"):
            if name in splits:
                result = evaluate_split(eval_model, splits[name], window=data_args.eval_window)
                results.update(result.to_dict(prefix=f"{name}_"))
        (output_dir / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        # The Trainer may have left a non-finite loss in train_output if training diverged: say so plainly.
        if not math.isfinite(results["train_loss"]):
            logger.warning("The training loss is not finite: training diverged (lower the learning rate)")
    return results


__all__ = [
    "BPTTStateCheckpointCallback",
    "arguments_from_dict",
    "CarriedState",
    "DataArguments",
    "LMTrainer",
    "ModelArguments",
    "RunArguments",
    "TimeBudgetCallback",
    "build_datasets",
    "build_model",
    "load_tokenizer",
    "plot_loss_curve",
    "run_training",
]
