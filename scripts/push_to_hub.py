"""`lstmlm push` from a checkout: a thin wrapper over `lstmlm.commands.push_to_hub` (`--help` lists the flags)."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lstmlm.commands.push_to_hub import *  # noqa: E402, F403  (make_parser, ...)
from lstmlm.commands.push_to_hub import main as _main  # noqa: E402


def main(argv: list[str] | None = None):
    return _main(argv, prog="push_to_hub.py")


if __name__ == "__main__":
    main()
