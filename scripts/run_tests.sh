#!/usr/bin/env bash
# The test command of the README and of CI: set-up, then the fast suite (pass `-m slow` for the slow cases).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q "$@"
