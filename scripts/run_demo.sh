#!/usr/bin/env bash
# The main job of the README: set-up, then tokenizer (if missing) + a few minutes of training on the bundled
# tinyshakespeare split + held-out perplexity + a generated sample, all in runs/demo. Extra flags go to demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" scripts/demo.py "$@"
