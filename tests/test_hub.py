"""Publishing a run on the Hub and loading it back, over real HTTP with the stock huggingface_hub client.

By default every Hub test runs against the in-process Hub-compatible server of `hub_server.py` (fresh per test, with a
fresh HF_HOME). The same tests run against a real Hub when a person asks for it:

    LSTMLM_REAL_HUB=1 HF_TOKEN=hf_... [HF_ENDPOINT=https://huggingface.co] python -m pytest tests/test_hub.py -m network

They then create private repos named `USER/lstmlm-test-NAME-RANDOM` and delete them afterwards; the "foreign namespace"
case writes to LSTMLM_FORBIDDEN_NAMESPACE (default `huggingface`), which the token must not be able to write.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
import yaml
from conftest import REPO_ROOT, make_tiny_config
from hub_server import TEST_USER, HubError, HubServer
from huggingface_hub import HfApi, ModelCard, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_lstmlm import LSTMLMForCausalLM
from modeling_lstmlm.hub import EVAL_RESULTS_FILE, RUN_ARGS_FILE, files_to_push, push_run, render_model_card

pytest_plugins = ["hub_server"]
# The client's own LFS PUT (huggingface_hub/lfs.py) passes `data=` to httpx2, which warns; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REAL_HUB = os.environ.get("LSTMLM_REAL_HUB") == "1"
PROMPT = "ROMEO: But soft, what light"
# What a run folder pushes besides its code files (the *.py that save_pretrained copied): the model and the tokenizer;
# no run record, no Trainer state, no checkpoints.
PUSHED = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


def pushed_files(run_dir: Path) -> list[str]:
    code = [p.name for p in run_dir.glob("*.py")]
    assert {"modeling_lstmlm.py", "configuration_lstmlm.py"} <= set(code)
    return sorted([*PUSHED, *code])


# ---------------------------------------------------------------- the Hub: the fixture server, or a real one


@dataclass
class Hub:
    """Where the tests push: `user` owns the repos, `env` is the environment for subprocesses."""

    user: str
    env: dict
    forbidden_namespace: str
    server: HubServer | None = None
    created: list = field(default_factory=list)

    def new_repo_id(self, name: str) -> str:
        repo_id = f"{self.user}/lstmlm-test-{name}-{uuid.uuid4().hex[:8]}"
        self.created.append(repo_id)
        return repo_id


def _refuse_foreign_namespaces(server: HubServer, monkeypatch) -> None:
    """Like the real Hub, answer 403 to writes outside the token's own namespace (the fixture server lets anyone write
    anywhere). The server dispatches to its methods by name, so wrapping them on the instance is enough."""
    for name in ("create_repo", "preupload", "commit"):
        original = getattr(server, name)

        def guarded(m, query, headers, body, _original=original, _name=name, **kwargs):
            if _name == "create_repo":
                namespace = json.loads(body or b"{}").get("organization") or server.user
            else:
                namespace = unquote(m["repo"]).split("/")[0]
            if namespace != server.user and server._authorized(headers):
                message = f'You don\'t have the rights to create a model under the namespace "{namespace}"'
                raise HubError(403, message)
            return _original(m, query, headers, body, **kwargs)

        monkeypatch.setattr(server, name, guarded)


def _fresh_cache(monkeypatch, hf_home: Path) -> None:
    """A per-test HF_HOME against the real Hub, in this process (huggingface_hub read the paths at import) and in
    subprocesses. The endpoint and the token stay the person's."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_assets, _cache_manager

    hub_cache, assets = str(hf_home / "hub"), str(hf_home / "assets")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", hub_cache)
    for name in ("HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    paths = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache}
    paths |= {"HF_ASSETS_CACHE": assets, "HF_XET_CACHE": str(hf_home / "xet")}
    for name, value in paths.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", hub_cache)
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", assets)


@pytest.fixture(params=["fixture", pytest.param("real", marks=pytest.mark.network)], ids=["fixture-hub", "real-hub"])
def hub(request, monkeypatch, tmp_path):
    if request.param == "fixture":
        server = request.getfixturevalue("hub_server")
        _refuse_foreign_namespaces(server, monkeypatch)
        yield Hub(TEST_USER, dict(os.environ), "someone-else", server)
        return
    if not REAL_HUB or not os.environ.get("HF_TOKEN"):
        pytest.skip("real Hub tests: set LSTMLM_REAL_HUB=1 and HF_TOKEN (and HF_ENDPOINT for another Hub)")
    _fresh_cache(monkeypatch, tmp_path / "hf_home")
    api = HfApi()
    forbidden = os.environ.get("LSTMLM_FORBIDDEN_NAMESPACE", "huggingface")
    real = Hub(api.whoami()["name"], dict(os.environ), forbidden)
    yield real
    for repo_id in real.created:
        api.delete_repo(repo_id, missing_ok=True)


# ---------------------------------------------------------------- a run folder, as scripts/train.py writes it


def make_run(folder: Path, seed: int = 0, record: bool = True) -> LSTMLMForCausalLM:
    """A tiny model + the committed tokenizer saved like a run, with a small run record in train.py's format."""
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    torch.manual_seed(seed)
    model = LSTMLMForCausalLM(make_tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **ids))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if record:
        run_args = {
            "model": {"model_name_or_path": None, "hidden_size": 16, "num_hidden_layers": 2},
            "data": {
                "train_file": ["/home/someone/lstmlm/data/tinyshakespeare/input.txt"],
                "validation_file": None,
                "test_file": "/home/someone/lstmlm/data/wikitext-2/valid.txt",
                "train_lines": "0:36000",
                "validation_lines": "36000:38000",
                "test_lines": None,
                "dataset_name": None,
                "dataset_config_name": None,
                "validation_split_percentage": 5.0,
                "block_size": 64,
                "stateful": True,
                "eval_window": 256,
                "cache_dir": "/home/someone/lstmlm/runs/cache",
            },
            "run": {"max_train_minutes": None},
            "training": {
                "output_dir": str(folder),
                "learning_rate": 0.002,
                "optim": "adamw_torch_fused",
                "lr_scheduler_type": "linear",
                "warmup_steps": 0,
                "weight_decay": 0.0,
                "max_grad_norm": 0.25,
                "per_device_train_batch_size": 16,
                "gradient_accumulation_steps": 1,
                "num_train_epochs": 3.0,
                "max_steps": -1,
                "seed": 42,
            },
            "num_parameters": model.num_parameters(),
            "num_tokens": {"train": 270000, "validation": 15000, "test": 300000},
        }
        eval_results = {
            "train_loss": 4.25,
            "train_steps": 700,
            "train_seconds": 600.5,
            "train_tokens": 716800,
            "num_parameters": model.num_parameters(),
            "validation_nll_sum": 71250.0,
            "validation_num_tokens": 15000,
            "validation_num_words": 12000,
            "validation_loss": 4.75,
            "validation_token_perplexity": 115.58428452718766,
            "validation_word_perplexity": 377.3472,
            "test_nll_sum": 1650000.0,
            "test_num_tokens": 300000,
            "test_num_words": 217646,
            "test_loss": 5.5,
            "test_token_perplexity": 244.69193226422038,
            "test_word_perplexity": 1958.123,
        }
        (folder / RUN_ARGS_FILE).write_text(json.dumps(run_args, indent=2) + "\n")
        (folder / EVAL_RESULTS_FILE).write_text(json.dumps(eval_results, indent=2) + "\n")
    # What train.py leaves next to the model and must not be published.
    (folder / "training_args.bin").write_bytes(b"pickled Trainer state")
    (folder / "checkpoint-500").mkdir()
    (folder / "checkpoint-500" / "model.safetensors").write_bytes(b"an old checkpoint")
    return model


def folder_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def ids_and_outputs(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    return ids, logits, generated


@pytest.fixture
def run_dir(tmp_path) -> Path:
    folder = tmp_path / "runs" / "demo"
    make_run(folder)
    return folder


# ---------------------------------------------------------------- the model card (no Hub)


EXPECTED_METADATA = {
    "datasets": ["karpathy/tiny_shakespeare", "Salesforce/wikitext"],
    "language": ["en"],
    "library_name": "transformers",
    "license": "apache-2.0",
    "metrics": ["perplexity"],
    "pipeline_tag": "text-generation",
    "tags": ["lstm", "awd-lstm", "lstmlm"],
    "model-index": [
        {
            "name": "demo-model",
            "results": [
                {
                    "task": {"type": "text-generation", "name": "Causal language modeling"},
                    "dataset": {
                        "name": "Tiny Shakespeare (lines 36000:38000)",
                        "type": "karpathy/tiny_shakespeare",
                        "split": "validation",
                    },
                    "metrics": [
                        {"type": "perplexity", "value": 115.58, "name": "Token perplexity"},
                        {"type": "word_perplexity", "value": 377.35, "name": "Word perplexity"},
                    ],
                },
                {
                    "task": {"type": "text-generation", "name": "Causal language modeling"},
                    "dataset": {
                        "name": "WikiText-2",
                        "type": "Salesforce/wikitext",
                        "config": "wikitext-2-v1",
                        "split": "test",
                    },
                    "metrics": [
                        {"type": "perplexity", "value": 244.69, "name": "Token perplexity"},
                        {"type": "word_perplexity", "value": 1958.12, "name": "Word perplexity"},
                    ],
                },
            ],
        }
    ],
}


def test_model_card_from_the_run_record(run_dir):
    before = folder_state(run_dir)
    card = render_model_card(run_dir, "someone/demo-model")
    text = str(card)
    assert front_matter(text) == EXPECTED_METADATA
    assert card.data.to_dict() == EXPECTED_METADATA
    # The evaluation table, the recipe and both usage snippets, filled from the run.
    assert (
        "| validation | Tiny Shakespeare (`tinyshakespeare/input.txt`, lines 36000:38000) | 15,000 | 12,000 | 4.7500 "
        "| 115.58 | 377.35 |" in text
    )
    assert "| test | WikiText-2 (`wikitext-2/valid.txt`) | 300,000 | 217,646 | 5.5000 | 244.69 | 1958.12 |" in text
    assert "Training text: Tiny Shakespeare (`tinyshakespeare/input.txt`, lines 0:36000); 270,000 tokens." in text
    assert "| sequence length (BPTT) | 64 |" in text and "| steps | 700 |" in text
    assert "| learning rate | 0.002, `linear` schedule |" in text
    assert 'AutoModelForCausalLM.from_pretrained("someone/demo-model")' in text
    assert (
        'AutoModelForCausalLM.from_pretrained("someone/demo-model", trust_remote_code=True, revision=revision)' in text
    )
    assert 'AutoTokenizer.from_pretrained("someone/demo-model", trust_remote_code=True, revision=revision)' in text
    assert "Regularizing and Optimizing {LSTM} Language Models" in text and "Long Short-Term Memory" in text
    assert "/home/someone" not in text and str(run_dir) not in text  # no local paths published
    assert folder_state(run_dir) == before  # rendering writes nothing


def test_model_card_without_a_run_record(tmp_path):
    folder = tmp_path / "bare"
    make_run(folder, record=False)
    card = render_model_card(folder, "someone/bare")
    assert card.data.to_dict() == {
        "language": ["en"],
        "library_name": "transformers",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "tags": ["lstm", "awd-lstm", "lstmlm"],
    }
    assert "did not record its training arguments" in str(card) and "did not record an evaluation" in str(card)

    with_options = render_model_card(folder, "someone/bare", datasets=["me/my-text"], license="mit", tags=["x"])
    assert with_options.data.datasets == ["me/my-text"] and with_options.data.license == "mit"
    assert with_options.data.tags == ["lstm", "awd-lstm", "lstmlm", "x"]


def test_model_card_of_a_hub_dataset_run(run_dir):
    run_args = json.loads((run_dir / RUN_ARGS_FILE).read_text())
    run_args["data"].update(
        train_file=None,
        test_file=None,
        train_lines=None,
        validation_lines=None,
        dataset_name="Salesforce/wikitext",
        dataset_config_name="wikitext-2-raw-v1",
    )
    (run_dir / RUN_ARGS_FILE).write_text(json.dumps(run_args))
    card = render_model_card(run_dir, "someone/wiki")
    assert card.data.datasets == ["Salesforce/wikitext"]
    assert [(r.dataset_type, r.dataset_config, r.dataset_split) for r in card.data.eval_results[::2]] == [
        ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation"),
        ("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
    ]
    assert "Training text: `Salesforce/wikitext` (wikitext-2-raw-v1), split `train`" in str(card)


def test_template_errors_are_clear(run_dir, tmp_path):
    typo = tmp_path / "typo.md"
    typo.write_text("---\n{{ card_data }}\n---\n{{ no_such_value }}\n")
    with pytest.raises(ValueError, match="Could not render the model card template .*'no_such_value' is undefined"):
        render_model_card(run_dir, "someone/x", template=typo)
    no_front_matter = tmp_path / "plain.md"
    no_front_matter.write_text("# {{ model_name }}\n")
    with pytest.raises(ValueError, match=r"does not start with `---\\n\{\{ card_data \}\}\\n---`"):
        render_model_card(run_dir, "someone/x", template=no_front_matter)
    with pytest.raises(OSError, match="Model card template .*missing.md not found"):
        render_model_card(run_dir, "someone/x", template=tmp_path / "missing.md")


@pytest.mark.parametrize(
    "missing",
    [
        "model.safetensors",
        "config.json",
        "modeling_lstmlm.py",
        "configuration_lstmlm.py",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ],
)
def test_incomplete_run_folder_is_refused_before_any_request(run_dir, hub_server, missing):
    (run_dir / missing).unlink()
    with pytest.raises(OSError, match=f"has no {missing} "):
        push_run(run_dir, f"{TEST_USER}/incomplete")
    assert hub_server.request_log == []
    assert "README.md" not in os.listdir(run_dir)


def test_config_without_auto_map_is_refused(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    del config["auto_map"]
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json has no `auto_map`: the repo would not load where lstmlm is not"):
        files_to_push(run_dir)
    with pytest.raises(OSError, match="Run folder .*nowhere does not exist"):
        files_to_push(run_dir / "nowhere")


def test_run_record_names_match_the_training_module():
    training = pytest.importorskip("modeling_lstmlm.training")
    assert (training.RUN_ARGS_FILE, training.EVAL_RESULTS_FILE) == (RUN_ARGS_FILE, EVAL_RESULTS_FILE)


# ---------------------------------------------------------------- push and pull over HTTP


def test_push_then_pull_gives_equal_logits_and_generation(hub, run_dir):
    repo_id = hub.new_repo_id("pull")
    before = folder_state(run_dir)
    commit = push_run(run_dir, repo_id, private=True, commit_message="Upload the demo run")
    assert folder_state(run_dir) == before  # README rendered in memory; nothing written into the run folder

    api = HfApi()
    info = api.model_info(repo_id)
    assert info.sha == commit.oid and info.private
    assert sorted(s.rfilename for s in info.siblings) == sorted([".gitattributes", "README.md", *pushed_files(run_dir)])
    history = api.list_repo_commits(repo_id)
    assert [c.title for c in history] == ["Upload the demo run", "initial commit"]  # ONE commit after creation
    if hub.server is not None:
        assert len(hub.server.requests("POST", "/commit/")) == 1
        assert len(hub.server.requests("PUT", "/_lfs/")) == 1  # model.safetensors went the LFS way
    assert ModelCard.load(repo_id).data.to_dict() == {
        **EXPECTED_METADATA,
        "model-index": [{**EXPECTED_METADATA["model-index"][0], "name": repo_id.split("/")[1]}],
    }

    pushed = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    pulled = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    assert type(pulled) is LSTMLMForCausalLM  # the installed package's class, not remote code
    local_tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert tokenizer(PROMPT).input_ids == local_tokenizer(PROMPT).input_ids
    assert tokenizer.chat_template == local_tokenizer.chat_template is not None
    _, logits, generated = ids_and_outputs(pushed, local_tokenizer)
    _, pulled_logits, pulled_generated = ids_and_outputs(pulled, tokenizer)
    torch.testing.assert_close(pulled_logits, logits, rtol=0, atol=0)
    assert pulled_generated.tolist() == generated.tolist()


REMOTE_CODE_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_lstmlm"] = None  # this machine "never installed" the package
    try:
        import modeling_lstmlm  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_lstmlm is importable in the child")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    repo_id, revision, prompt = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    # trust_remote_code for the tokenizer too: its class is the stock one, but AutoTokenizer first reads the config,
    # whose custom model type would otherwise stop at a [y/N] question (answered "no" without a terminal).
    tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
    assert type(tokenizer).__name__ == "TokenizersBackend", type(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True, revision=revision).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    print(json.dumps({"ids": ids.tolist(), "logits": logits.tolist(), "generated": generated.tolist()}))
    """
)


def load_without_the_package(hub: Hub, tmp_path: Path, repo_id: str, revision: str | None = None) -> dict:
    """Load `repo_id` at `revision` in a fresh Python that cannot import modeling_lstmlm (remote code)."""
    env = {**hub.env, "PYTHONPATH": ""}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHILD, repo_id, revision or "", PROMPT],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_push_twice_and_load_the_first_commit_by_hash_without_the_package(hub, run_dir, tmp_path):
    repo_id = hub.new_repo_id("twice")
    first_model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    first = push_run(run_dir, repo_id, private=True)
    second_model = make_run(tmp_path / "second", seed=1)
    second = push_run(tmp_path / "second", repo_id, commit_message="Second run")
    assert first.oid != second.oid and HfApi().model_info(repo_id).sha == second.oid

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    ids, first_logits, first_generated = ids_and_outputs(first_model, tokenizer)
    _, second_logits, _ = ids_and_outputs(second_model, tokenizer)
    assert not torch.allclose(first_logits, second_logits)
    # With the package (in this process): each commit by its hash, and main is the second.
    for revision, expected in ((first.oid, first_logits), (second.oid, second_logits), (None, second_logits)):
        loaded = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision).eval()
        torch.testing.assert_close(ids_and_outputs(loaded, tokenizer)[1], expected, rtol=0, atol=0)

    # Without it: the code stored in the repo, at the first commit.
    child = load_without_the_package(hub, tmp_path, repo_id, first.oid)
    assert child["ids"] == ids.tolist()
    torch.testing.assert_close(torch.tensor(child["logits"]), first_logits, rtol=0, atol=1e-6)
    assert child["generated"] == first_generated.tolist()


def test_transformers_push_to_hub_gives_a_loadable_repo(hub, tmp_path):
    repo_id = hub.new_repo_id("transformers")
    model = make_run(tmp_path / "run", record=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    model.push_to_hub(repo_id, private=True)
    tokenizer.push_to_hub(repo_id)
    files = set(HfApi().list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "modeling_lstmlm.py", "configuration_lstmlm.py"} <= files
    assert {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= files
    config = json.loads(Path(HfApi().hf_hub_download(repo_id, "config.json")).read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_lstmlm.LSTMLMForCausalLM"

    ids, logits, generated = ids_and_outputs(model, tokenizer)
    child = load_without_the_package(hub, tmp_path, repo_id)
    assert child["ids"] == ids.tolist()
    torch.testing.assert_close(torch.tensor(child["logits"]), logits, rtol=0, atol=1e-6)
    assert child["generated"] == generated.tolist()


# ---------------------------------------------------------------- failures: clear, and nothing half-written


def _no_token(hub, run_dir, repo_id, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(run_dir.parent / "no-token-here"))
    push_run(run_dir, repo_id)


def _wrong_token(hub, run_dir, repo_id, monkeypatch):
    push_run(run_dir, repo_id, token="hf_not_a_valid_token")


def _missing_repo(hub, run_dir, repo_id, monkeypatch):
    push_run(run_dir, repo_id, create=False)


def _missing_branch(hub, run_dir, repo_id, monkeypatch):
    HfApi().create_repo(repo_id, private=True)
    push_run(run_dir, repo_id, revision="no-such-branch", create=False)


def _foreign_namespace(hub, run_dir, repo_id, monkeypatch):
    push_run(run_dir, f"{hub.forbidden_namespace}/{repo_id.split('/')[1]}")


@pytest.mark.parametrize(
    ("push", "error", "message"),
    [
        (_no_token, LocalTokenNotFoundError, "needs a Hugging Face token with write access"),
        (_wrong_token, HfHubHTTPError, "401"),
        (_missing_repo, RepositoryNotFoundError, "With `create=False` the repo .* must exist"),
        (_missing_branch, RevisionNotFoundError, "With `create=False` the branch 'no-such-branch' of the repo"),
        (_foreign_namespace, HfHubHTTPError, "403 (.|\n)*The token may not write to"),
    ],
    ids=["no-token", "wrong-token", "missing-repo-no-create", "missing-branch-no-create", "foreign-namespace"],
)
def test_failed_push_is_clear_and_leaves_nothing_behind(hub, run_dir, push, error, message):
    repo_id = hub.new_repo_id("fail")
    before = folder_state(run_dir)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(error, match=message):
        push(hub, run_dir, repo_id, patch)
    assert folder_state(run_dir) == before  # no README.md (or anything else) left in the run folder
    api = HfApi()
    if api.repo_exists(repo_id):  # only the branch case made the repo: it still holds only its first commit
        assert api.list_repo_files(repo_id) == [".gitattributes"]
    if hub.server is not None:
        assert hub.server.requests("POST", "/commit/") == []
        assert hub.server.lfs_objects == {}  # not even the weights were uploaded


def test_pulling_a_missing_file_fails_clearly_and_leaves_no_partial_snapshot(hub, run_dir):
    repo_id = hub.new_repo_id("partial")
    first = push_run(run_dir, repo_id, private=True)
    api = HfApi()
    api.delete_file("model.safetensors", repo_id=repo_id)  # the head commit has no weights
    head = api.model_info(repo_id).sha

    with pytest.raises(
        OSError, match=f"{repo_id} does not appear to have a file named (pytorch_model.bin or )?model.safetensors"
    ):
        AutoModelForCausalLM.from_pretrained(repo_id)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(repo_id, revision="no-such-branch")

    repo_cache = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    assert sorted(p.name for p in (repo_cache / "snapshots").iterdir()) == [head]  # nothing for the bad revision
    assert sorted(p.name for p in (repo_cache / "snapshots" / head).iterdir()) == ["config.json"]
    assert (repo_cache / "snapshots" / head / "config.json").read_bytes() == (run_dir / "config.json").read_bytes()
    assert list(repo_cache.rglob("*.incomplete")) == []
    # The first commit still has everything.
    pulled = AutoModelForCausalLM.from_pretrained(repo_id, revision=first.oid).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    expected = ids_and_outputs(AutoModelForCausalLM.from_pretrained(run_dir).eval(), tokenizer)[1]
    torch.testing.assert_close(ids_and_outputs(pulled, tokenizer)[1], expected, rtol=0, atol=0)


def test_an_interrupted_download_leaves_no_partial_file(hub_server, run_dir):
    repo_id = f"{TEST_USER}/interrupted"
    push_run(run_dir, repo_id)
    resolve = hub_server.resolve

    def half_of_the_weights(m, query, headers, body, range_header=None):
        status, out, data = resolve(m, query, headers, body, range_header=range_header)
        return status, out, data[: len(data) // 2] if m["path"].endswith(".safetensors") else data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_server, "resolve", half_of_the_weights)  # the headers still announce the full size
        with pytest.raises(OSError, match="Consistency check failed: file should be of size"):
            AutoModelForCausalLM.from_pretrained(repo_id)
    repo_cache = Path(os.environ["HF_HUB_CACHE"]) / f"models--{TEST_USER}--interrupted"
    assert [p.name for p in repo_cache.rglob("model.safetensors")] == []
    assert list(repo_cache.rglob("*.incomplete")) == []
    size = (run_dir / "model.safetensors").stat().st_size
    assert [p.stat().st_size for p in (repo_cache / "blobs").iterdir() if p.stat().st_size >= size // 2] == []

    pulled = AutoModelForCausalLM.from_pretrained(repo_id).eval()  # the next try downloads it whole
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    expected = ids_and_outputs(AutoModelForCausalLM.from_pretrained(run_dir).eval(), tokenizer)[1]
    torch.testing.assert_close(ids_and_outputs(pulled, tokenizer)[1], expected, rtol=0, atol=0)


# ---------------------------------------------------------------- the script


SCRIPT = REPO_ROOT / "scripts" / "push_to_hub.py"


def test_push_script_pushes_a_run(hub, run_dir):
    repo_id = hub.new_repo_id("script")
    cmd = [sys.executable, str(SCRIPT), str(run_dir), repo_id, "--private", "--revision", "dev"]
    cmd += ["--commit-message", "From the script", "--dataset", "karpathy/tiny_shakespeare", "--tag", "demo"]
    result = subprocess.run(cmd, env=hub.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    api = HfApi()
    info = api.model_info(repo_id, revision="dev")
    assert f"in commit {info.sha}" in result.stdout
    assert info.private
    assert sorted(s.rfilename for s in info.siblings) == sorted([".gitattributes", "README.md", *pushed_files(run_dir)])
    assert api.list_repo_commits(repo_id, revision="dev")[0].title == "From the script"
    assert api.list_repo_files(repo_id) == [".gitattributes"]  # main untouched
    readme = Path(api.hf_hub_download(repo_id, "README.md", revision="dev")).read_text()
    assert front_matter(readme)["datasets"] == ["karpathy/tiny_shakespeare"]
    assert front_matter(readme)["tags"] == ["lstm", "awd-lstm", "lstmlm", "demo"]


def test_push_script_errors_end_cleanly(hub, run_dir):
    spec = importlib.util.spec_from_file_location("push_to_hub_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    repo_id = hub.new_repo_id("never")
    with pytest.raises(SystemExit, match="(?s)push_to_hub.py: error: .*With `create=False` the repo .* must exist"):
        script.main([str(run_dir), repo_id, "--no-create"])
    (run_dir / "tokenizer.json").unlink()
    with pytest.raises(SystemExit, match="push_to_hub.py: error: .* has no tokenizer.json"):
        script.main([str(run_dir), repo_id])
    assert not HfApi().repo_exists(repo_id)


def test_push_script_smoke_is_a_dry_run():
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}  # any request would fail
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    listed = result.stdout.split("Would push to your-name/lstmlm-smoke: ", 1)[1].split("\n", 1)[0].split(", ")
    assert listed[-1] == "README.md" and set(PUSHED) | {"modeling_lstmlm.py", "configuration_lstmlm.py"} <= set(listed)
    assert all(name in PUSHED or name.endswith(".py") for name in listed[:-1])
    readme = result.stdout.split("--- README.md ---\n", 1)[1]
    assert front_matter(readme)["pipeline_tag"] == "text-generation"


# ---------------------------------------------------------------- a failed push leaves nothing behind


def _failing_commit(server, monkeypatch):
    def commit(m, query, headers, body):
        raise HubError(500, "Internal Error (injected by the test)")

    monkeypatch.setattr(server, "commit", commit)


def test_failed_push_deletes_the_repo_it_created(hub_server, run_dir, monkeypatch):
    _failing_commit(hub_server, monkeypatch)
    repo_id = f"{TEST_USER}/atomic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(HfHubHTTPError, match=f"(?s)500.*The repo {repo_id}, created for this push, was deleted again"):
        push_run(run_dir, repo_id)
    assert not HfApi().repo_exists(repo_id)
    assert hub_server.requests("POST", "/api/repos/create") and hub_server.requests("DELETE", "/api/repos/delete")


def test_failed_push_keeps_an_existing_repo_and_deletes_only_the_branch_it_made(hub_server, run_dir, monkeypatch):
    repo_id = f"{TEST_USER}/atomic-{uuid.uuid4().hex[:8]}"
    api = HfApi()
    api.create_repo(repo_id)
    _failing_commit(hub_server, monkeypatch)
    with pytest.raises(HfHubHTTPError, match=f"branch 'dev' of {repo_id}, created for this push, was deleted again"):
        push_run(run_dir, repo_id, revision="dev")
    assert api.repo_exists(repo_id)
    assert [ref.name for ref in api.list_repo_refs(repo_id).branches] == ["main"]
    with pytest.raises(HfHubHTTPError, match="500") as failed:
        push_run(run_dir, repo_id)  # nothing was created: nothing to undo
    assert "deleted again" not in str(failed.value) and api.repo_exists(repo_id)


def test_push_leaves_visibility_to_the_account_default(hub_server, run_dir, monkeypatch):
    bodies = []
    original = hub_server.create_repo

    def create_repo(m, query, headers, body):
        bodies.append(json.loads(body))
        return original(m, query, headers, body)

    monkeypatch.setattr(hub_server, "create_repo", create_repo)
    push_run(run_dir, f"{TEST_USER}/visibility-{uuid.uuid4().hex[:8]}")
    push_run(run_dir, f"{TEST_USER}/visibility-{uuid.uuid4().hex[:8]}", private=True)
    # The first request sets neither `visibility` nor `private` (older clients send `private`): the Hub applies the
    # account's default.
    asked = [body.get("visibility") or {True: "private", False: "public"}.get(body.get("private")) for body in bodies]
    assert asked == [None, "private"]
