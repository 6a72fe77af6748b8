#!/usr/bin/env bash
# Installs what lstmlm needs on a fresh machine: the CPU build of torch first (a bare `torch` requirement would pull a
# multi-GB CUDA build), then this package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
