"""What the commands share: the checkout's bundled data, the help format and the early check of local paths."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

# A checkout's root (data/, recipes/); an installed wheel has none of them, and the commands say so where needed.
CHECKOUT = Path(__file__).resolve().parents[2]
TINYSHAKESPEARE = CHECKOUT / "data" / "tinyshakespeare" / "input.txt"

# Caps every training command at this many optimizer steps when set: tests/test_readme.py runs the README's and the
# docs' training commands as written, in seconds, this way.
MAX_STEPS_ENV = "LSTMLM_MAX_STEPS"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default in its help."""


def bundled_text() -> Path:
    """tinyshakespeare from a checkout's data/ (the default text of the smoke modes and the demo)."""
    if not TINYSHAKESPEARE.is_file():
        raise OSError(
            f"The bundled text {TINYSHAKESPEARE} is not here (it ships with a checkout, not with the wheel): "
            "pass a text file (e.g. --train_file / --text_file)"
        )
    return TINYSHAKESPEARE


def looks_local(name: str | os.PathLike) -> bool:
    """Whether a model argument names a local folder rather than a Hub id.

    Local: a path object, anything starting with `/`, `.` or `~`, more than one `/`, a backslash, a character a Hub id
    cannot have, or a first component that is an existing local folder (`runs/x` when `runs/` exists).
    """
    if isinstance(name, Path):
        return True
    name = str(name)
    if name.startswith(("/", ".", "~")) or "\\" in name or not _HUB_ID.match(name):
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def check_model_path(name: str | os.PathLike | None, flag: str = "--model") -> None:
    """Fail at once, in one line, for a local model folder that does not exist (instead of minutes of Hub retries).

    Raises:
        SystemExit: `"{flag} {name}: no such folder"` (or `is not a folder` for a file).
    """
    if name is None or not looks_local(name):
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise SystemExit(f"error: {flag} {name}: no such folder")
    if not path.is_dir():
        raise SystemExit(f"error: {flag} {name}: is not a folder")


def max_steps_cap(max_steps: int = -1) -> int:
    """`max_steps` (-1: none, the epochs decide) capped at `$LSTMLM_MAX_STEPS` when that is set.

    Raises:
        ValueError: `LSTMLM_MAX_STEPS` is not a positive integer.
    """
    value = os.environ.get(MAX_STEPS_ENV)
    if not value:
        return max_steps
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_STEPS_ENV}={value!r}: expected a positive integer")
    return int(value) if max_steps < 0 else min(max_steps, int(value))
