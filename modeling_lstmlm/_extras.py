"""Optional dependencies: imported only where a feature needs them, with an error naming the extra to install.

The core install (`pip install lstmlm`) is what loading, generating and saving a model need: torch, transformers,
tokenizers, safetensors, huggingface_hub, numpy and jinja2 (chat template, model card). Everything else is an extra:

- `[train]`: datasets, accelerate (the `Trainer`), matplotlib (loss curves), tqdm
- `[onnx]`: onnx, onnxruntime
- `[apps]`: datasets, scikit-learn, sacrebleu (classification and chat/translation fine-tuning and their scores)
- `[serve]`: the HTTP server's packages
- `[peft]`: peft
- `[test]`, `[dev]`, `[all]`
"""

from __future__ import annotations

import importlib
from types import ModuleType

# The distribution to install for an import name, where the two differ.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "pyyaml"}


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` (e.g. `"onnxruntime"` or `"matplotlib.figure"`) or raise an ImportError naming the extra.

    Args:
        module: the import name.
        extra: the `lstmlm` extra that installs it (`train`, `onnx`, `apps`, `serve`, `peft`).
        feature: what needs it, for the message (e.g. "ONNX export").

    Raises:
        ImportError: "{feature}: `{distribution}` is not installed; pip install 'lstmlm[{extra}]' (or ...)".
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        distribution = _DISTRIBUTIONS.get(top, top)
        raise ImportError(
            f"{feature}: `{distribution}` is not installed; "
            f"pip install 'lstmlm[{extra}]' (or pip install {distribution})"
        ) from error
