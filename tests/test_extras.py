"""The lean core and the extras: the core loads, generates, saves and renders a card without any extra installed, and
each optional feature names the extra to install when its package is missing."""

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from modeling_lstmlm._extras import require

# Every package that only an extra installs (import names).
EXTRA_MODULES = [
    "datasets",
    "accelerate",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "sklearn",
    "sacrebleu",
    "fastapi",
    "uvicorn",
    "peft",
    "pytest_randomly",
]

# `None` in sys.modules is how Python marks a module as absent: `import x` raises ImportError and
# `importlib.util.find_spec("x")` (what transformers' `is_*_available` checks use) returns None.
BLOCKER = "import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"


def _run_without(blocked: list[str], body: str, tmp_path) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=blocked) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_require_names_the_extra_and_the_distribution(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    with pytest.raises(
        ImportError,
        match=r"Scores: `scikit-learn` is not installed; pip install 'lstmlm\[apps\]' \(or pip install scikit-learn\)",
    ):
        require("sklearn", "apps", "Scores")
    assert require("json", "apps", "x").dumps([1]) == "[1]"


def test_core_works_without_any_extra(tmp_path):
    """Load, generate, save, reload, tokenize with the packaged tokenizer and render the model card with no extra."""
    result = _run_without(
        EXTRA_MODULES,
        """
        import torch
        import modeling_lstmlm
        from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM
        from modeling_lstmlm.hub import render_model_card
        from modeling_lstmlm.smoke import save_tiny_model
        from modeling_lstmlm.quantization import quantize_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        for name in ("datasets", "accelerate", "matplotlib", "onnx", "sklearn", "sacrebleu"):
            assert sys.modules.get(name) is None, name  # still the blocker: nothing imported it
        folder = save_tiny_model("tiny")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        ids = tokenizer("ROMEO:", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 5
        quantize_model(model)
        card = render_model_card(folder, "user/tiny")  # the packaged template
        assert "user/tiny" in str(card)
        print("CORE OK")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CORE OK" in result.stdout


@pytest.mark.parametrize(
    ("blocked", "statement", "message"),
    [
        (
            "datasets",
            "import modeling_lstmlm.sft",
            r"fine-tuning .*: `datasets` is not installed; pip install 'lstmlm\[apps\]'",
        ),
        ("datasets", "import modeling_lstmlm.classification", r"classification fine-tuning .*'lstmlm\[apps\]'"),
        (
            "onnx",
            "from modeling_lstmlm.onnx_export import export_onnx;"
            " from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM;"
            " export_onnx(LSTMLMForCausalLM(LSTMLMConfig(vocab_size=64, hidden_size=8)).eval(), 'out')",
            r"ONNX export: `onnx` is not installed; pip install 'lstmlm\[onnx\]'",
        ),
        pytest.param(
            "sacrebleu",
            "from modeling_lstmlm.sft import translation_metrics; translation_metrics(['a'], ['a'])",
            r"Translation scores: `sacrebleu` is not installed; pip install 'lstmlm\[apps\]'",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("datasets") is None, reason="modeling_lstmlm.sft asks for datasets first"
            ),
        ),
        (
            "matplotlib",
            "from modeling_lstmlm.training import plot_loss_curve; plot_loss_curve([], 'x.png')",
            r"The loss curve: `matplotlib` is not installed; pip install 'lstmlm\[train\]'",
        ),
    ],
)
def test_a_missing_extra_is_named(blocked, statement, message, tmp_path):
    result = _run_without([blocked], statement, tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), result.stderr[-2000:]
    assert __import__("re").search(message, last), last


def test_packaged_tokenizer_and_card_are_the_top_level_files(repo_root):
    """In a checkout the package data are the files of record (the wheel job compares the installed copies)."""
    from modeling_lstmlm.packaged import model_card_template, tokenizer_dir

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (tokenizer_dir() / name).read_bytes() == (repo_root / "tokenizer" / name).read_bytes(), name
    assert model_card_template().read_bytes() == (repo_root / "model_card.md").read_bytes()
