#!/usr/bin/env bash
# CI: the wheel as a user installs it. Builds it, installs it in a fresh virtual environment with the core
# dependencies only, and from a folder outside the checkout runs `lstmlm --help`, generation with the packaged
# tokenizer, and a dry-run push that renders the packaged model card; then adds the [train] extra for a smoke training
# run, generation and a dry-run push of that run; then [all] (every extra's feature imports; ONNX export of that run).
# Nothing here reads the checkout but the wheel and 800 lines of text.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lstmlm-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PIP=(--quiet --disable-pip-version-check)
INSTALL=("${PIP[@]}" --no-compile)  # no .pyc compiling of torch & co (minutes of CPU); imports compile what they use

"$PYTHON" -m pip wheel "${PIP[@]}" --no-deps --no-build-isolation -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/lstmlm-*.whl)
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
LSTMLM="$WORK/venv/bin/lstmlm"
"$VPY" -m pip install "${INSTALL[@]}" "torch==2.13.0"  # see README: on a CPU-only machine, from the CPU index
"$VPY" -m pip install "${INSTALL[@]}" "$WHEEL"          # the core only
cd "$WORK"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1

echo "== core install: $("$VPY" -m pip list 2>/dev/null | grep -ciE '^(datasets|accelerate|onnx|sacrebleu|matplotlib) ') extras present"
"$LSTMLM" --help > help.txt && head -3 help.txt  # (a pipe into head would break the pipe under pipefail)
"$VPY" - "$ROOT" <<'PY'
import filecmp, sys
from pathlib import Path
from modeling_lstmlm.packaged import model_card_template, tokenizer_dir
root = Path(sys.argv[1])
assert "site-packages" in str(tokenizer_dir()), tokenizer_dir()  # the installed copy, not the checkout
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    assert filecmp.cmp(tokenizer_dir() / name, root / "tokenizer" / name, shallow=False), name
assert filecmp.cmp(model_card_template(), root / "model_card.md", shallow=False)
print("packaged tokenizer and model card: identical to the checkout's")
PY
"$LSTMLM" generate --smoke --max_new_tokens 5
"$LSTMLM" push --smoke | grep -E "^(Would push to|pipeline_tag)"
if "$LSTMLM" train --smoke > train-core.txt 2>&1; then echo "lstmlm train ran without accelerate"; exit 1; fi
tail -1 train-core.txt | grep -F "pip install 'lstmlm[train]'"  # the Trainer needs the extra: it says so

"$VPY" -m pip install "${INSTALL[@]}" "$WHEEL[train]"
head -n 800 "$ROOT/data/tinyshakespeare/input.txt" > text.txt
"$LSTMLM" train --smoke --train_file text.txt --output_dir run --cache_dir cache --disable_tqdm true | tail -4
"$LSTMLM" generate --model run --prompt "ROMEO:" --max_new_tokens 10
"$LSTMLM" push run your-name/lstmlm-smoke --dry_run | grep -E "^(Would push to|pipeline_tag|  - name)"

# Every extra: [all] gives every feature (each one imported; the ONNX export and sacreBLEU run for real).
"$VPY" -m pip install "${INSTALL[@]}" "$WHEEL[all]"
"$LSTMLM" export-onnx --model run --output_dir run-onnx | tail -1
"$VPY" - <<'PY'
import importlib
for name in ("modeling_lstmlm.training", "modeling_lstmlm.sft", "modeling_lstmlm.classification",
             "modeling_lstmlm.baselines", "modeling_lstmlm.ulmfit", "modeling_lstmlm.translation",
             "modeling_lstmlm.onnx_export", "modeling_lstmlm.serving", "peft", "sklearn", "sacrebleu",
             "onnxruntime", "fastapi", "uvicorn", "matplotlib", "datasets", "accelerate"):
    importlib.import_module(name)
from modeling_lstmlm.sft import translation_metrics
assert translation_metrics(["a b c d"], ["a b c d"])["bleu"] > 99
print("[all]: every extra's feature imports")
PY
echo "wheel check: passed"
