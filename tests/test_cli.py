"""The `lstmlm` command: its commands, their help (with defaults), the thin scripts, and the early local-path check."""

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from lstmlm import cli
from lstmlm.commands._common import check_model_path, looks_local


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (
        "train",
        "generate",
        "chat",
        "evaluate",
        "push",
        "quantize",
        "export-onnx",
        "train-tokenizer",
        "serve",
    ):
        assert f"\n  {name} " in out, name


def test_unknown_command_fails_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lstmlm: error: unknown command 'trian'" in err and "train-tokenizer" in err


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_command_help_shows_its_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lstmlm {command} ")
    if command != "serve":  # serving's own parser (issue 13) states its defaults in the help texts
        assert "(default: " in out


def test_looks_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/x", "./x", "../x", "/abs/x", "~/x", "a/b/c", "a\\b", "name with space", tmp_path / "x"):
        assert looks_local(name), name
    for name in ("gpt2", "user/model", "user/model-v1.2"):
        assert not looks_local(name), name


def test_check_model_path_names_the_missing_folder(tmp_path):
    with pytest.raises(SystemExit, match=f"^error: --model {tmp_path}/nope: no such folder$"):
        check_model_path(f"{tmp_path}/nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is not a folder$"):
        check_model_path(str(tmp_path / "file"), "--tokenizer")
    check_model_path(str(tmp_path))  # exists: no error
    check_model_path("user/model")  # a Hub id: left to the Hub client


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("generate.py", ["--model"]),
        ("evaluate.py", ["--model"]),
        ("quantize.py", ["--output_dir", "out", "--model"]),
        ("chat.py", ["--model"]),
        ("train.py", ["--model_name_or_path"]),
    ],
)
def test_a_missing_local_model_fails_in_one_line_without_the_hub(script, args, tmp_path):
    (tmp_path / "runs").mkdir()
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO_ROOT)}  # a Hub call would hang
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / script), *args, "runs/does_not_exist"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    flag = args[-1]
    assert done.stderr.strip().splitlines() == [f"error: {flag} runs/does_not_exist: no such folder"]


def test_train_help_is_short_and_help_all_lists_every_trainer_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    short = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help_all"])
    full = capsys.readouterr().out
    for flag in ("--stateful", "--hidden_size", "--train_file", "--learning_rate", "--max_steps", "--help_all"):
        assert f"  {flag} " in short, flag
    assert "--help_all lists them all" in short
    assert "--adam_beta1" not in short and "  --adam_beta1 " in full  # a Trainer flag only the long help lists
    assert len(short.splitlines()) < len(full.splitlines()) / 2


def test_train_parses_the_trainer_flags_the_short_help_leaves_out():
    from lstmlm.commands.train import parse_args

    *_, training_args, _ = parse_args(["--smoke", "--adam_beta1", "0.7", "--output_dir", "unused"])
    assert training_args.adam_beta1 == 0.7
