"""Publishing a training run on the Hugging Face Hub: the model card, and the push in one commit.

A run folder (what `scripts/train.py` writes, see `training.run_training`) holds the model (`model.safetensors`,
`config.json` with `auto_map`, the code files that `auto_map` names, `generation_config.json`), the tokenizer
(`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`) and the run's record: `run_args.json` (every
resolved argument) and `eval_results.json` (token- and word-level perplexities).

`push_run` uploads the model and tokenizer files plus a `README.md` rendered from the model-card template (the
top-level `model_card.md`) in ONE commit, so a reader never sees a repo with new weights and an old card. The run record
itself stays local (it holds local paths and pickled Trainer state); what a reader needs from it is in the card. The
README is rendered in memory: nothing is written into the run folder, so a failed push leaves it as it was.

    >>> from modeling_lstmlm.hub import push_run, render_model_card
    >>> print(render_model_card("runs/demo", "me/lstmlm-demo").content)  # doctest: +SKIP
    >>> push_run("runs/demo", "me/lstmlm-demo").commit_url  # doctest: +SKIP

Loading needs no helper: `AutoModelForCausalLM.from_pretrained(repo_id)` (with the package imported), or with
`trust_remote_code=True` where it is not installed, and `AutoTokenizer.from_pretrained(repo_id)`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

from .packaged import model_card_template

logger = logging.get_logger(__name__)

# The run record, as `training.run_training` names it (not imported from there: that module pulls in the Trainer).
RUN_ARGS_FILE = "run_args.json"
EVAL_RESULTS_FILE = "eval_results.json"

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint: the index names its shard files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
OPTIONAL_TOKENIZER_FILES = ("chat_template.jinja", "special_tokens_map.json", "added_tokens.json")
README_FILE = "README.md"

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_LANGUAGE = ("en",)
DEFAULT_TAGS = ("lstm", "awd-lstm", "lstmlm")

# The corpora bundled in data/, by folder name: (pretty name, Hub dataset id, its configuration) of the same text.
KNOWN_TEXTS = {
    "tinyshakespeare": ("Tiny Shakespeare", "karpathy/tiny_shakespeare", None),
    "wikitext-2": ("WikiText-2", "Salesforce/wikitext", "wikitext-2-v1"),  # the tokenized variant, with <unk>
    "inaugural": ("US presidential inaugural addresses", None, None),
}

_REGULARISERS = (  # config field -> how the card names it
    ("embedding_dropout", "embedding dropout (dropouti)"),
    ("hidden_dropout", "dropout between LSTM layers (dropouth)"),
    ("output_dropout", "dropout before the output layer (dropout)"),
    ("weight_dropout", "DropConnect on the hidden-to-hidden weights (wdrop)"),
    ("embedding_row_dropout", "embedding row dropout (dropoute)"),
    ("activation_regularization", "activation regularisation, AR (alpha)"),
    ("temporal_activation_regularization", "temporal activation regularisation, TAR (beta)"),
)


# ---------------------------------------------------------------------------------------------------------------------
# The run folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _require(run_dir: Path, name: str, what: str) -> None:
    if not (run_dir / name).is_file():
        raise OSError(f"{run_dir} has no {name} ({what}): it is not a complete run folder")


def files_to_push(run_dir: str | os.PathLike) -> list[str]:
    """The files of `run_dir` that make a loadable Hub repo (README.md aside), checked to be complete.

    Weights (`model.safetensors`, or the index of a sharded checkpoint and its shards), `config.json` (which must hold
    `auto_map`), every code file `auto_map` names and the files those import relatively, `generation_config.json`,
    the tokenizer (`tokenizer.json`, `tokenizer_config.json`, and `chat_template.jinja` / `special_tokens_map.json` /
    `added_tokens.json` where present). Raises `OSError` naming the first missing file, `ValueError` for a config
    without `auto_map`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OSError(f"Run folder {run_dir} does not exist")
    _require(run_dir, CONFIG_FILE, "the model config")
    config = _read_json(run_dir / CONFIG_FILE)
    if config.get("model_type") != "lstmlm":
        raise ValueError(f"{run_dir / CONFIG_FILE} is not an lstmlm config (model_type={config.get('model_type')!r})")
    auto_map = config.get("auto_map")
    if not auto_map:
        raise ValueError(
            f"{run_dir / CONFIG_FILE} has no `auto_map`: the repo would not load where lstmlm is not installed. "
            "Save the model with this package's `save_pretrained`, which writes it and copies the code files."
        )

    if (run_dir / WEIGHTS_INDEX_FILE).is_file():
        shards = sorted(set(_read_json(run_dir / WEIGHTS_INDEX_FILE).get("weight_map", {}).values()))
        weights = [WEIGHTS_INDEX_FILE, *shards]
    else:
        weights = [WEIGHTS_FILE]
    for name in weights:
        _require(run_dir, name, "the model weights")

    code = []
    for reference in auto_map.values():
        for value in reference if isinstance(reference, (list, tuple)) else [reference]:
            if value:  # "module.Class", or "repo--module.Class" for code kept in another repo
                module = value.split("--")[-1].rsplit(".", 1)[0]
                code.append(f"{module}.py")
    for name in sorted(set(code)):
        _require(run_dir, name, "modeling code named in config.json's auto_map")
        code.extend(os.path.relpath(f, run_dir) for f in get_relative_import_files(run_dir / name))
    for name in code:
        _require(run_dir, name, "modeling code imported by the code files")

    _require(run_dir, GENERATION_CONFIG_FILE, "the generation config")
    for name in TOKENIZER_FILES:
        _require(run_dir, name, "the tokenizer")
    optional = [name for name in OPTIONAL_TOKENIZER_FILES if (run_dir / name).is_file()]
    return sorted({*weights, CONFIG_FILE, GENERATION_CONFIG_FILE, *code, *TOKENIZER_FILES, *optional})


def _count_parameters(run_dir: Path, weight_files: list[str]) -> int:
    """Parameters stored in the safetensors files (a tied output layer is stored once), read from the headers."""
    total = 0
    for name in weight_files:
        if name.endswith(".safetensors"):
            with safe_open(run_dir / name, framework="pt") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


# ---------------------------------------------------------------------------------------------------------------------
# The model card


def _file_label(path: str) -> str:
    """`folder/name.txt`: enough to recognise a local file without publishing where it lived."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


class _Text(NamedTuple):
    """Where a split's text came from: a description for the card, and a Hub dataset id when there is one."""

    description: str
    name: str
    hub_id: str | None = None
    hub_config: str | None = None


def _local_text(path: str, lines: str | None) -> _Text:
    folder = Path(path).parent.name
    pretty, hub_id, hub_config = KNOWN_TEXTS.get(folder, (_file_label(path), None, None))
    where = f"`{_file_label(path)}`" + (f", lines {lines}" if lines else "")
    name = pretty + (f" (lines {lines})" if lines else "")
    return _Text(f"{pretty} ({where})" if pretty != _file_label(path) else where, name, hub_id, hub_config)


def _split_text(data: dict, split: str) -> _Text | None:
    """The text of `split` ("train", "validation", "test") as `DataArguments` in `run_args.json` describe it."""
    dataset = data.get("dataset_name")
    if dataset:
        config = data.get("dataset_config_name")
        label = f"`{dataset}`" + (f" ({config})" if config else "")
        return _Text(f"{label}, split `{split}`", f"{dataset}" + (f" {config}" if config else ""), dataset, config)
    train_files = data.get("train_file") or []
    if split == "train":
        if len(train_files) == 1:
            return _local_text(train_files[0], data.get("train_lines"))
        names = ", ".join(f"`{_file_label(f)}`" for f in train_files[:5])
        more = f" and {len(train_files) - 5} more" if len(train_files) > 5 else ""
        return _Text(f"{len(train_files)} text files: {names}{more}", f"{len(train_files)} text files")
    file, lines = data.get(f"{split}_file"), data.get(f"{split}_lines")
    if file:
        return _local_text(file, lines)
    if lines and len(train_files) == 1:
        return _local_text(train_files[0], lines)
    if split == "validation" and train_files:
        pct = data.get("validation_split_percentage")
        return _Text(f"the last {pct}% of the training text, held out", "held-out training text")
    return None


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _training_section(run_args: dict, eval_results: dict) -> dict:
    data, training = run_args.get("data", {}), run_args.get("training", {})
    train_text = _split_text(data, "train")
    settings = []

    def add(name: str, value: Any) -> None:
        if value is not None:
            settings.append((name, value))

    if data.get("stateful"):
        add("batching", "stateful truncated BPTT: contiguous streams, (h, c) carried (detached) between batches")
    else:
        add("batching", "independent blocks, shuffled, each starting from a zero state")
    add("sequence length (BPTT)", data.get("block_size"))
    batch = training.get("per_device_train_batch_size")
    accumulation = training.get("gradient_accumulation_steps") or 1
    if batch is not None:
        add("batch size", f"{batch} per device" + (f" x {accumulation} accumulation steps" if accumulation > 1 else ""))
    optimizer = training.get("optim")
    if optimizer is not None:
        add(
            "optimizer",
            f"`{optimizer}`" + (f", weight decay {training['weight_decay']}" if training.get("weight_decay") else ""),
        )
    if training.get("learning_rate") is not None:
        schedule = training.get("lr_scheduler_type")
        warmup = training.get("warmup_steps") or training.get("warmup_ratio")
        add(
            "learning rate",
            f"{training['learning_rate']:g}"
            + (f", `{schedule}` schedule" if schedule else "")
            + (f", warmup {warmup}" if warmup else ""),
        )
    add("gradient clipping (max norm)", training.get("max_grad_norm"))
    steps = eval_results.get("train_steps")
    if steps is not None:
        add("steps", _number(steps))
    elif training.get("max_steps", -1) > 0:
        add("steps", _number(training["max_steps"]))
    else:
        add("epochs", training.get("num_train_epochs"))
    add("tokens seen", _number(eval_results["train_tokens"]) if "train_tokens" in eval_results else None)
    add("final training loss", _number(eval_results["train_loss"]) if "train_loss" in eval_results else None)
    seconds = eval_results.get("train_seconds")
    if seconds is not None:
        add("training time", f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min")
    add("seed", training.get("seed"))
    base = (run_args.get("model") or {}).get("model_name_or_path")
    if base:
        add("fine-tuned from", f"`{_file_label(base) if os.path.isabs(base) else base}`")
    return {
        "train_text": train_text.description if train_text else "not recorded",
        "train_tokens": (run_args.get("num_tokens") or {}).get("train"),
        "settings": settings,
    }


def _evaluation_section(data: dict, eval_results: dict) -> list[dict]:
    rows = []
    for split in ("validation", "test"):
        if f"{split}_token_perplexity" not in eval_results:
            continue
        text = _split_text(data, split)
        rows.append(
            {
                "split": split,
                "text": text.description if text else "-",
                "text_name": text.name if text else split,
                "hub_id": text.hub_id if text else None,
                "hub_config": text.hub_config if text else None,
                **{key: eval_results.get(f"{split}_{key}") for key in ("num_tokens", "num_words", "loss")},
                "token_perplexity": eval_results.get(f"{split}_token_perplexity"),
                "word_perplexity": eval_results.get(f"{split}_word_perplexity"),
            }
        )
    return rows


def _eval_results(model_name: str, rows: list[dict]) -> list[EvalResult]:
    results = []
    for row in rows:
        common = dict(
            task_type="text-generation",
            task_name="Causal language modeling",
            dataset_type=row["hub_id"] or re.sub(r"[^A-Za-z0-9_.-]+", "-", row["text_name"]).strip("-").lower(),
            dataset_name=row["text_name"],
            dataset_config=row["hub_config"],
            dataset_split=row["split"],
        )
        for metric_type, key, name in (
            ("perplexity", "token_perplexity", "Token perplexity"),
            ("word_perplexity", "word_perplexity", "Word perplexity"),
        ):
            if row[key] is not None and not math.isfinite(row[key]):
                logger.warning(
                    f"Leaving the non-finite {row['split']} {name.lower()} ({row[key]}) out of the model-index"
                )
            elif row[key] is not None:
                results.append(
                    EvalResult(**common, metric_type=metric_type, metric_name=name, metric_value=round(row[key], 2))
                )
    return results


def model_card_data(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    license: str = DEFAULT_LICENSE,
    language: str | list[str] = DEFAULT_LANGUAGE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    base_model: str | None = None,
) -> tuple[ModelCardData, dict]:
    """The Hub metadata of a run (`ModelCardData`) and the values the template fills in.

    `datasets` defaults to the Hub ids of the run's texts (its `dataset_name`, or the Hub copy of a bundled corpus);
    `base_model` is set only when given (a fine-tuned run's `model_name_or_path` may be a local folder). The
    `model-index` holds the token- and word-level perplexities of `eval_results.json`, per split.
    """
    run_dir = Path(run_dir)
    files = files_to_push(run_dir)
    config = _read_json(run_dir / CONFIG_FILE)
    run_args = _read_json(run_dir / RUN_ARGS_FILE) if (run_dir / RUN_ARGS_FILE).is_file() else None
    eval_results = _read_json(run_dir / EVAL_RESULTS_FILE) if (run_dir / EVAL_RESULTS_FILE).is_file() else None
    data = (run_args or {}).get("data", {})
    model_name = repo_id.split("/")[-1]

    rows = _evaluation_section(data, eval_results or {})
    if datasets is None:
        texts = [_split_text(data, split) for split in ("train", "validation", "test")]
        datasets = list(dict.fromkeys(t.hub_id for t in texts if t is not None and t.hub_id))
    card_data = ModelCardData(
        license=license,
        language=[language] if isinstance(language, str) else list(language),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(tags or [])])),
        datasets=list(datasets) or None,
        base_model=base_model,
        metrics=["perplexity"] if rows else None,
        model_name=model_name if rows else None,  # the name of the model-index; alone it is no metadata field
        eval_results=_eval_results(model_name, rows) or None,
    )

    hidden = config.get("hidden_size")
    regularisers = [(label, config[name]) for name, label in _REGULARISERS if config.get(name)]
    if config.get("variational_dropout"):
        regularisers.append(("variational (locked) dropout masks", "one mask per sequence, shared over time"))
    context = {
        "repo_id": repo_id,
        "model_name": model_name,
        "config": {
            "architecture": (config.get("architectures") or ["LSTMLMForCausalLM"])[0],
            "num_hidden_layers": config.get("num_hidden_layers"),
            "hidden_size": hidden,
            "embedding_size": config.get("embedding_size") or hidden,
            "vocab_size": config.get("vocab_size"),
            "tie_word_embeddings": config.get("tie_word_embeddings", False),
        },
        "num_parameters": _count_parameters(run_dir, files),
        "regularisers": regularisers,
        "training": _training_section(run_args, eval_results or {}) if run_args is not None else None,
        "evaluation": rows,
        "eval_window": data.get("eval_window"),
        "language": card_data.language,
        "has_chat_template": "chat_template.jinja" in files,
    }
    return card_data, context


def render_model_card(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    template: str | os.PathLike | None = None,
    license: str = DEFAULT_LICENSE,
    language: str | list[str] = DEFAULT_LANGUAGE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """The README.md of the run's Hub repo, rendered from `template` (default: the packaged `model_card.md`).

    The template is Jinja2 with undefined names as errors; `{{ card_data }}` is the YAML metadata. The rendered card
    is parsed back and its metadata compared with what was built, so a template that breaks the front matter fails
    here rather than on the Hub. Nothing is written to disk.
    """
    template = Path(template) if template is not None else model_card_template()
    if not template.is_file():
        raise OSError(f"Model card template {template} not found (pass `template=` a Jinja2 markdown file)")
    card_data, context = model_card_data(
        run_dir, repo_id, license=license, language=language, datasets=datasets, tags=tags, base_model=base_model
    )
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        content = environment.from_string(template.read_text(encoding="utf-8")).render(
            card_data=card_data.to_yaml(), **context
        )
    except jinja2.TemplateError as err:
        raise ValueError(f"Could not render the model card template {template}: {err}") from err
    card = ModelCard(content)  # parses the front matter; raises on a malformed model-index
    if card.data.to_dict() != card_data.to_dict():
        raise ValueError(f"The model card template {template} does not start with `---\\n{{{{ card_data }}}}\\n---`")
    return card


# ---------------------------------------------------------------------------------------------------------------------
# The push


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    create: bool = True,
    *,
    commit_description: str | None = None,
    template: str | os.PathLike | None = None,
    license: str = DEFAULT_LICENSE,
    language: str | list[str] = DEFAULT_LANGUAGE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    base_model: str | None = None,
) -> CommitInfo:
    """Upload a run folder to the Hub repo `repo_id` in one commit and return its `CommitInfo` (`.oid`, `.commit_url`).

    The commit holds `files_to_push(run_dir)` and the README.md of `render_model_card` (rendered in memory). With
    `create=True` (the default, as `model.push_to_hub` does) the repo is created if missing (`private` applies only
    then; `None`, the default, is the account's default visibility) and so is the branch `revision`; with
    `create=False` both must exist. `token=None` uses the token the client finds (`HF_TOKEN`, or the one saved by
    `hf auth login`).

    All or nothing: if the commit fails, a repo this call created is deleted again, and so is a branch it created in
    an existing repo (the error says so, and says if that clean-up failed too); a repo or branch that was there before
    is left as it was.

    Raises, before anything is sent: `OSError` / `ValueError` for an incomplete run folder or template,
    `LocalTokenNotFoundError` without any token. From the Hub: `HfHubHTTPError` (401 for a token it refuses, 403 for a
    namespace the token may not write), `RepositoryNotFoundError` for a missing repo with `create=False`,
    `RevisionNotFoundError` for a missing branch with `create=False`.
    """
    run_dir = Path(run_dir)
    files = files_to_push(run_dir)
    card = render_model_card(
        run_dir,
        repo_id,
        template=template,
        license=license,
        language=language,
        datasets=datasets,
        tags=tags,
        base_model=base_model,
    )
    if token is False or (token is None and get_token() is None):
        raise LocalTokenNotFoundError(
            f"Pushing to {repo_id} needs a Hugging Face token with write access: log in with `hf auth login`, set "
            "HF_TOKEN, or pass `token=`"
        )
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(run_dir / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo=README_FILE, path_or_fileobj=str(card).encode("utf-8")))
    logger.info(f"Pushing {run_dir} to {repo_id}: {', '.join(op.path_in_repo for op in operations)}")
    created_repo = created_branch = False
    try:
        if create:
            created_repo = not api.repo_exists(repo_id)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None and not revision.startswith("refs/pr/"):
                branches = {ref.name for ref in api.list_repo_refs(repo_id).branches}
                created_branch = not created_repo and revision not in branches
                api.create_branch(repo_id, branch=revision, exist_ok=True)
        try:
            return api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message or f"Upload {run_dir.name} (lstmlm)",
                commit_description=commit_description,
                revision=revision,
            )
        except Exception as err:
            _undo_creation(api, err, repo_id, revision, created_repo, created_branch)
            raise
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        if not create:
            what = "repo" if isinstance(err, RepositoryNotFoundError) else f"branch {revision!r} of the repo"
            err.append_to_message(f"\nWith `create=False` the {what} {repo_id} must exist: create it first.")
        raise
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 403:
            err.append_to_message(
                f"\nThe token may not write to {repo_id}: check the namespace and the token's rights."
            )
        raise


def _undo_creation(api: HfApi, err: Exception, repo_id: str, revision, created_repo: bool, created_branch: bool):
    """After a failed commit: delete the repo (or branch) that `push_run` created, and say so in `err`'s message."""
    if not (created_repo or created_branch):
        return
    what = f"repo {repo_id}" if created_repo else f"branch {revision!r} of {repo_id}"
    try:
        if created_repo:
            api.delete_repo(repo_id)
        else:
            api.delete_branch(repo_id, branch=revision)
        note = f"The {what}, created for this push, was deleted again: nothing was left on the Hub."
    except Exception as cleanup_error:  # the original error matters most; report this one with it
        note = f"The {what} was created for this push but could not be deleted again ({cleanup_error}): delete it."
    logger.warning(note)
    if isinstance(err, HfHubHTTPError):
        err.append_to_message(f"\n{note}")
    elif hasattr(err, "add_note"):  # Python >= 3.11
        err.add_note(note)


__all__ = ["files_to_push", "model_card_data", "push_run", "render_model_card"]
