"""Files shipped inside the package: the project's trained tokenizer and the model-card template.

In a checkout `modeling_lstmlm/assets/` links to the top-level `tokenizer/` and `model_card.md` (the files of record,
which `scripts/train_tokenizer.py` and the card's authors change); a wheel holds copies. Both are found with
`importlib.resources`, so an installed package needs no checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _asset(*parts: str) -> Path:
    resource = files(__package__).joinpath("assets", *parts)
    if not isinstance(resource, Path):  # a zipped install: the loaders below need real files
        raise OSError(f"lstmlm's package data must be installed as files, not inside an archive ({resource})")
    return resource


def tokenizer_dir() -> Path:
    """The folder of the project's trained byte-level BPE tokenizer (loads with `AutoTokenizer.from_pretrained`).

    Raises:
        OSError: the package was installed without its data (the folder or one of its files is missing).
    """
    folder = _asset("tokenizer")
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise OSError(f"The packaged tokenizer {folder} lacks {', '.join(missing)}: reinstall lstmlm")
    return folder


def model_card_template() -> Path:
    """The Jinja2 model-card template that `hub.render_model_card` renders by default.

    Raises:
        OSError: the package was installed without its data.
    """
    path = _asset("model_card.md")
    if not path.is_file():
        raise OSError(f"The packaged model card template {path} is missing: reinstall lstmlm")
    return path
