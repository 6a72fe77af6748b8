#!/usr/bin/env bash
# CI: the lower bounds of pyproject.toml are tested. A fresh virtual environment gets the OLDEST supported
# transformers / tokenizers / huggingface_hub / safetensors (transformers 5.24 is the oldest tested: 5.21 is the first with
# the API the model uses; 5.24 requires tokenizers >= 0.23.1, huggingface_hub >= 1.31, safetensors >= 0.8)
# and runs the core tests on them.
# torch: only 2.13.0 is tested (the CPU wheel this machine serves locally; older CPU wheels are not at hand here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lstmlm-oldest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
OLDEST=("torch==2.13.0" "transformers==5.24.0" "tokenizers==0.23.1" "huggingface_hub==1.31.0" "safetensors==0.8.0")
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${OLDEST[@]}" "pytest>=8"
"$WORK/venv/bin/python" -m pip list 2>/dev/null | grep -iE "^(torch|transformers|tokenizers|huggingface.hub|safetensors|numpy|jinja2) "
# The core tests: model, config, generation, int8, the lean-core check (no extra is installed here).
PYTHONPATH="$ROOT" "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_configuration.py tests/test_modeling.py tests/test_generation.py tests/test_inference.py \
    tests/test_extras.py
