"""`lstmlm generate` from a checkout: a thin wrapper over `lstmlm.commands.generate` (`--help` lists the flags)."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lstmlm.commands.generate import *  # noqa: E402, F403  (main, parse_args, ...)
from lstmlm.commands.generate import main  # noqa: E402

if __name__ == "__main__":
    main()
