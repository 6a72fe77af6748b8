#!/usr/bin/env bash
# Installs what lstmlm needs: torch 2.13.0 first, then this package (editable) with its test extras.
#
# torch is chosen so that nobody gets a build they did not ask for:
#   - already installed at 2.13.0: kept;
#   - a local wheel that pip finds without an index (this project's machines serve the CPU wheel that way): that one;
#   - an NVIDIA GPU (nvidia-smi present): PyPI's default build, which is the CUDA one;
#   - otherwise (CPU only): the CPU build from PyTorch's CPU index; PyPI's default on Linux is the multi-GB CUDA build.
# TORCH_INDEX_URL overrides the index (e.g. https://download.pytorch.org/whl/cu126 for another CUDA version).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check)
TORCH="torch==2.13.0"
if "$PYTHON" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    :
elif [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "${PIP[@]}" "$TORCH" --index-url "$TORCH_INDEX_URL"
elif "${PIP[@]}" --no-index "$TORCH" 2>/dev/null; then
    :
elif command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" "$TORCH"
else
    "${PIP[@]}" "$TORCH" --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" -e ".[test]"
