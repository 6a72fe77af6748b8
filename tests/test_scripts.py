"""The training, evaluation and generation scripts, run as a user runs them: subprocesses in their smoke modes, then
on the folder `train.py --smoke` wrote, and with bad input."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPTS = REPO_ROOT / "scripts"
pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "tokenizer" / "tokenizer.json").is_file()
    or not (REPO_ROOT / "data" / "tinyshakespeare" / "input.txt").is_file(),
    reason="the committed tokenizer/ or data/tinyshakespeare is missing",
)


def load_script(name: str):
    """Import scripts/<name>.py as a module (for the in-process checks of its argument handling)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args, cwd=None, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    if check:
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`train.py --smoke` once for the module: its output folder and stdout."""
    tmp = tmp_path_factory.mktemp("smoke")
    done = run("train.py", "--smoke", "--output_dir", tmp / "run", "--cache_dir", tmp / "cache", cwd=tmp)
    return tmp / "run", done.stdout


def test_train_smoke_writes_the_run_folder(smoke_run):
    folder, stdout = smoke_run
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "run_args.json",
        "eval_results.json",
        "loss_curve.png",
    ):
        assert (folder / name).is_file(), name
    assert not (folder / "training_args.bin").exists()  # nothing pickled: the arguments are in run_args.json
    assert json.loads((folder / "config.json").read_text())["use_cache"] is True
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["train_steps"] == 8
    assert "test" in stdout and f"{results['test_word_perplexity']:.2f}" in stdout
    # One summary line per split's token file: tokens, bytes on disk, time.
    assert sum(line.startswith(("train: ", "validation: ", "test: ")) and "MiB on disk" in line
               for line in stdout.splitlines()) == 3  # fmt: skip
    run_args = json.loads((folder / "run_args.json").read_text())
    assert run_args["data"]["stateful"] is True and run_args["model"]["hidden_size"] == 32


def test_generate_greedy_matches_in_process_generate(smoke_run, tmp_path):
    folder, _ = smoke_run
    out = tmp_path / "gen.json"
    run("generate.py", "--model", folder, "--prompt", "ROMEO:", "--max_new_tokens", 6, "--output_file", out)
    result = json.loads(out.read_text())
    assert result["prompt"] == "ROMEO:" and result["arguments"]["max_new_tokens"] == 6

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer("ROMEO:")["input_ids"]])
    expected = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert result["continuations"] == [tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)]


def test_generate_sampling_options(smoke_run, tmp_path):
    folder, _ = smoke_run
    generate = load_script("generate")
    args = ["--model", folder, "--do_sample", "--top_p", 0.9, "--top_k", 20, "--temperature", 0.8, "--seed", 3]
    result = generate.main([str(a) for a in [*args, "--num_return_sequences", 2, "--max_new_tokens", 4]])
    assert len(result["continuations"]) == 2
    again = generate.main([str(a) for a in [*args, "--num_return_sequences", 2, "--max_new_tokens", 4]])
    assert again["continuations"] == result["continuations"]  # seeded
    with pytest.raises(SystemExit):
        generate.parse_args(["--model", str(folder), "--top_p", "1.5"])


def test_evaluate_matches_the_end_of_training_numbers(smoke_run, tmp_path):
    folder, _ = smoke_run
    out = tmp_path / "eval.json"
    text = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"
    done = run("evaluate.py", "--model", folder, "--text_file", text, "--lines", "700:800", "--window", 64,
               "--output_file", out)  # fmt: skip
    (result,) = json.loads(out.read_text())["results"].values()
    trained = json.loads((folder / "eval_results.json").read_text())  # the smoke test split is lines 700:800
    assert result["num_words"] == trained["test_num_words"]
    assert result["num_tokens"] == trained["test_num_tokens"]
    assert result["nll_sum"] == pytest.approx(trained["test_nll_sum"], rel=1e-6)
    assert "word ppl" in done.stdout


@pytest.mark.parametrize("script", ["generate.py", "evaluate.py"])
def test_smoke_modes(script, tmp_path):
    done = run(script, "--smoke", cwd=tmp_path)
    assert done.stdout.strip()


def test_demo_smoke_writes_everything(tmp_path):
    output = tmp_path / "demo"
    done = run("demo.py", "--smoke", "--output_dir", output, cwd=tmp_path)
    summary = json.loads((output / "demo.json").read_text())
    assert summary["results"]["train_steps"] == 20  # a fixed number of steps, not a time budget
    assert done.stdout.startswith("Smoke run: a tiny model for a few seconds")  # what to expect, before it starts
    assert summary["sample"].startswith("ROMEO:") and (output / "sample.txt").read_text().startswith("ROMEO:")
    for split in ("validation", "test"):
        word_ppl = summary["results"][f"{split}_word_perplexity"]
        assert f"{word_ppl:.2f}" in done.stdout
    assert (output / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert AutoModelForCausalLM.from_pretrained(output).config.use_cache is True


def test_train_straight_from_the_file_without_a_token_file(tmp_path):
    """`--streaming --no_cache_tokens`: the train lines are read in pieces and tokenized as training reads them."""
    output, cache = tmp_path / "run", tmp_path / "cache"
    run("train.py", "--smoke", "--streaming", "--no_cache_tokens", "--output_dir", output, "--cache_dir", cache)
    results = json.loads((output / "eval_results.json").read_text())
    assert results["train_steps"] == 8 and results["train_tokens"] == 8 * 4 * 16
    names = sorted(json.loads(path.read_text())["name"] for path in cache.glob("tokens-*.json"))
    assert names == ["test", "validation"]  # the train split never went to disk


def test_train_missing_file_is_an_oserror(tmp_path):
    train = load_script("train")
    with pytest.raises(OSError, match="Text file not found: .*missing.txt"):
        train.main(["--smoke", "--train_file", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o")])


def test_train_too_little_text_names_the_needed_length(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.\nAnd one more line.\n")
    argv = ["--smoke", "--train_file", str(short), "--train_lines", "0:1", "--validation_lines", "1:2"]
    argv += ["--test_lines", "1:2", "--output_dir", str(tmp_path / "o"), "--cache_dir", str(tmp_path / "c")]
    with pytest.raises(ValueError, match="Too little text: .* needs at least 65 tokens"):
        load_script("train").main(argv)


def test_train_config_with_unknown_key_is_rejected(tmp_path):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"hidden_size": 8, "not_a_flag": 1}))
    with pytest.raises(ValueError, match=r"sets unknown arguments: \['not_a_flag'\]"):
        load_script("train").parse_args(["--config", str(config), "--output_dir", str(tmp_path / "o")])


def test_train_config_sets_defaults_and_flags_win(tmp_path):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"hidden_size": 8, "learning_rate": 0.5, "stateful": True}))
    model_args, data_args, _, training_args, _ = load_script("train").parse_args(
        ["--config", str(config), "--learning_rate", "0.25", "--output_dir", str(tmp_path / "o")]
    )
    assert model_args.hidden_size == 8 and data_args.stateful is True
    assert training_args.learning_rate == 0.25
    assert data_args.train_lines == "0:36000" and data_args.test_lines == "38000:40000"  # the default split


def test_demo_default_is_a_fixed_number_of_steps_and_says_what_to_expect():
    demo = load_script("demo")
    args = demo.parse_args([])
    assert args.max_steps == 1000 and args.minutes is None
    assert demo.expected_duration(args).startswith("Training 1000 steps: expect about 8.5 min of training")
    assert "time budget" in demo.expected_duration(demo.parse_args(["--minutes", "10"]))
