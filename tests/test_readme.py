"""Every fenced code block of the README and the docs runs, as written.

`README.md`, `docs/*.md`, `benchmarks/README.md` and `model_card.md`: each ```python block runs in a fresh Python
process and each ```bash / ```sh / ```console / ```shell block in bash (`set -euo pipefail`), with the working
directory a scratch folder that links the checkout's folders (data/, tokenizer/, scripts/, ...) and has its own
`runs/`, so everything a block writes lands in the scratch folder. `lstmlm` and `python` on the PATH are this
checkout's. Blocks of other languages (output, ```text) are not run.

What a block needs that the docs assume a user already has is made first, the way the docs make it, at smoke size:
`runs/demo` (`scripts/demo.py --smoke`), `runs/chat` (`scripts/finetune_chat.py --smoke`), `runs/lm`
(`scripts/train.py --smoke`), and the "your data" files `my.txt`, `chats.jsonl`, `reviews.csv`. The Hub is the local
server of `tests/hub_server.py` (`HF_ENDPOINT`, `HF_TOKEN`), so nothing leaves the machine. Sizes shrink only
through the environment: `LSTMLM_MAX_STEPS` caps every training command's optimizer steps
(`lstmlm.commands._common.max_steps_cap`); no block's text is changed (the model card is rendered, as the Hub gets
it, with its `repo_id`).

Markers: an HTML comment (or, in the Jinja model card, a Jinja comment) on the lines right before a fence:
- `<!-- skip-test: REASON -->`: not run (a real Hub account, a GPU, hours of CPU, ../shared data); reported with the
  reason (`pytest -rs`);
- `<!-- slow-test: REASON -->`: runs only with `-m slow`;
- `<!-- test: name=NAME -->` names a block; `<!-- test: after=NAME -->` runs the named block first in the same
  folder (python blocks after a python block run in the same process, so they share its variables);
  `<!-- test: background -->` starts a bash block (a server) in the background for the blocks that come after it,
  waits for `http://127.0.0.1:8000/health` and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from hub_server import HubServer

DOCS = ["README.md", *sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "docs").glob("*.md"))]
DOCS += ["benchmarks/README.md", "model_card.md"]
RUNNABLE = {"python": "python", "bash": "bash", "sh": "bash", "console": "bash", "shell": "bash"}
# Linked into every scratch folder (read through the links; outputs go to the folder's own runs/).
LINKED = ["data", "tokenizer", "recipes", "scripts", "benchmarks", "modeling_lstmlm", "lstmlm", "model_card.md"]
MAX_STEPS = "2"
TIMEOUT = 900
SERVER_HEALTH = "http://127.0.0.1:8000/health"

_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_MARKER = re.compile(r"^\s*(?:<!--|\{#-?)\s*(skip-test|slow-test|test)\s*:\s*(.*?)\s*(?:-->|-?#\})\s*$")


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str  # "python" or "bash"
    code: str
    skip: str | None = None
    slow: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_blocks(doc: str) -> list[Block]:
    """The runnable fenced blocks of `doc` with their markers."""
    lines = (REPO_ROOT / doc).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        lang = match.group(2).lower()
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if lang in RUNNABLE:
            block = Block(doc, index + 1, RUNNABLE[lang], textwrap.dedent("\n".join(lines[index + 1 : end])) + "\n")
            above = index - 1
            while above >= 0 and (marker := _MARKER.match(lines[above])):
                kind, text = marker.groups()
                if kind == "skip-test":
                    block.skip = text
                elif kind == "slow-test":
                    block.slow = text
                else:
                    for option in text.split(","):
                        key, _, value = option.strip().partition("=")
                        block.options[key] = value
                above -= 1
            blocks.append(block)
        index = end + 1
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in parse_blocks(doc)]
NAMED = {block.options["name"]: block for block in ALL_BLOCKS if block.options.get("name")}


def _param(block: Block):
    marks = []
    if block.skip:
        marks.append(pytest.mark.skip(reason=f"{block.id}: {block.skip}"))
    elif block.slow:
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=f"{block.id}-{block.lang}", marks=marks)


def test_the_docs_have_blocks_and_every_marker_is_known():
    """The parser finds the blocks (a broken fence would silently drop them) and every `after=` names a block."""
    assert sum(block.doc == "README.md" for block in ALL_BLOCKS) >= 10
    for block in ALL_BLOCKS:
        assert set(block.options) <= {"name", "after", "background"}, (block.id, block.options)
        if "after" in block.options:
            assert block.options["after"] in NAMED, (block.id, block.options["after"])
        if block.skip is not None or block.slow is not None:
            assert (block.skip or block.slow).strip(), f"{block.id}: a marker must say why"


# ---------------------------------------------------------------- the scratch folder and what the docs assume


@pytest.fixture(scope="session")
def hub():
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_env(hub, tmp_path_factory) -> dict[str, str]:
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "python3").symlink_to(sys.executable)
    lstmlm = bin_dir / "lstmlm"
    lstmlm.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -m lstmlm "$@"\n')
    lstmlm.chmod(0o755)
    hf_home = tmp_path_factory.mktemp("hf_home")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),
        "LSTMLM_MAX_STEPS": MAX_STEPS,
        "MPLBACKEND": "Agg",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name in ("HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    env["HF_DATASETS_CACHE"] = str(hf_home / "datasets")
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="session")
def prepared(base_env, tmp_path_factory) -> Path:
    """The run folders and data files the docs assume, made by the project's own command at smoke size.

    `runs/demo` is what `scripts/demo.py --smoke` makes; `runs/lm` (the docs' pretrained LM) and `runs/chat` (the
    model `chat` talks to) are copies of it: a pretrained LM with the chat template, which is what they are.
    """
    root = tmp_path_factory.mktemp("prepared")
    _run([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--smoke", "--output_dir", "runs/demo"], root,
         base_env)  # fmt: skip
    for name in ("lm", "chat"):
        shutil.copytree(root / "runs" / "demo", root / "runs" / name)
    lines = (REPO_ROOT / "data" / "tinyshakespeare" / "input.txt").read_text().splitlines()
    (root / "my.txt").write_text("\n".join(lines[:1000]) + "\n")  # --smoke reads lines [0, 800)
    turns = [
        {"messages": [{"role": "user", "content": lines[i]}, {"role": "assistant", "content": lines[i + 1]}]}
        for i in range(0, 80, 2)
    ]
    (root / "chats.jsonl").write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    texts = [line.replace(chr(34), "") for line in lines[:80] if line.strip()][:60]  # an empty cell is refused
    rows = [f'"{text}",{"good" if i % 2 else "bad"}' for i, text in enumerate(texts)]
    (root / "reviews.csv").write_text("review,sentiment\n" + "\n".join(rows) + "\n")
    return root


def _scratch(prepared: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    for name in LINKED:
        (work / name).symlink_to(REPO_ROOT / name)
    for path in (prepared / "runs").iterdir():
        (work / "runs" / path.name).symlink_to(path)
    for name in ("my.txt", "chats.jsonl", "reviews.csv"):
        shutil.copy(prepared / name, work / name)
    return work


# ---------------------------------------------------------------- running a block


def _chain(block: Block) -> list[Block]:
    """The blocks to run, prerequisites (`after=`) first."""
    chain = [block]
    while "after" in chain[0].options:
        chain.insert(0, NAMED[chain[0].options["after"]])
    return chain


def _render(block: Block, hub_repo: str | None) -> str:
    if block.doc != "model_card.md":
        return block.code
    from jinja2 import Template

    return Template(block.code).render(repo_id=hub_repo, has_chat_template=True)


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the background block exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def _refuse_if_answering(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=2):
            pass
    except OSError:
        return
    raise AssertionError(f"{url} already answers: another server holds the port the README's server uses")


def _execute(block: Block, work: Path, env: dict[str, str], hub_repo: str | None) -> None:
    steps: list[tuple[str, str, Block]] = []
    for item in _chain(block):
        code = _render(item, hub_repo)
        if steps and item.lang == "python" and steps[-1][0] == "python":
            steps[-1] = ("python", steps[-1][1] + "\n" + code, item)
        else:
            steps.append((item.lang, code, item))
    background: list[subprocess.Popen] = []
    try:
        for number, (lang, code, item) in enumerate(steps):
            script = work / f"block{number}.{'py' if lang == 'python' else 'sh'}"
            if lang == "python":
                script.write_text(code)
                command = [sys.executable, str(script)]
            else:
                script.write_text("set -euo pipefail\n" + code)
                command = ["bash", str(script)]
            if "background" in item.options:
                log = open(work / f"block{number}.log", "w")
                _refuse_if_answering(SERVER_HEALTH)  # a server left from elsewhere would answer in its place
                background.append(
                    subprocess.Popen(
                        command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
                _wait_for(SERVER_HEALTH, background[-1])
            else:
                _run(command, work, env)
    finally:
        for process in background:  # the block's whole process group: bash and the server it started
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            for _ in range(60):  # the server may outlive the bash that started it by a moment
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)


@pytest.fixture(scope="session")
def hub_repo(prepared, hub) -> str:
    """runs/demo uploaded to the local Hub, for the model card's code (rendered with this repo id)."""
    from huggingface_hub import HfApi, constants

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the local server speaks plain LFS
        repo_id = api.create_repo("readme-test/card").repo_id
        api.upload_folder(repo_id=repo_id, folder_path=prepared / "runs" / "demo")
    return repo_id


@pytest.mark.parametrize("block", [_param(block) for block in ALL_BLOCKS])
def test_doc_block_runs(block, prepared, base_env, tmp_path, request):
    work = _scratch(prepared, tmp_path)
    uses_hub_repo = any(item.doc == "model_card.md" for item in _chain(block))
    _execute(block, work, base_env, request.getfixturevalue("hub_repo") if uses_hub_repo else None)
