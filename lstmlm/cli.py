"""`lstmlm COMMAND [FLAGS]`: every command of the project in one executable (installed with the package).

    lstmlm train --smoke                              # = python scripts/train.py --smoke
    lstmlm generate --model runs/demo --prompt "ROMEO:"
    lstmlm chat --model runs/chat
    lstmlm evaluate --model runs/demo --text_file my.txt
    lstmlm push runs/demo me/lstmlm-demo --dry_run
    lstmlm quantize --model runs/demo --output_dir runs/demo-int8
    lstmlm export-onnx --model runs/demo --output_dir runs/demo-onnx
    lstmlm train-tokenizer --smoke
    lstmlm serve runs/demo --port 8000

`lstmlm COMMAND --help` lists a command's flags (the same as the matching `scripts/*.py` of a checkout).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module under lstmlm.commands, one line of help). Modules are imported only when their command runs.
COMMANDS = {
    "train": ("train", "pretrain or fine-tune with the stock Trainer (needs lstmlm[train])"),
    "generate": ("generate", "generate text from a saved model folder or Hub id"),
    "chat": ("chat", "chat with a model, keeping the conversation's state"),
    "evaluate": ("evaluate", "token- and word-level perplexity of a model on text"),
    "push": ("push_to_hub", "publish a run folder on the Hub in one commit (weights, code, tokenizer, card)"),
    "quantize": ("quantize", "int8 weights for CPU inference"),
    "export-onnx": ("export_onnx", "ONNX prefill + decode-step graphs (needs lstmlm[onnx])"),
    "train-tokenizer": ("train_tokenizer", "train the byte-level BPE tokenizer"),
    "serve": ("serve", "an OpenAI-compatible HTTP server, batched decoding (needs lstmlm[serve])"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "usage: lstmlm COMMAND [FLAGS]   (lstmlm COMMAND --help for its flags)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.split("\n\n", 1)[0] + "\n\n" + usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lstmlm: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"lstmlm.commands.{COMMANDS[command][0]}")
    program = sys.argv[0]
    sys.argv[0] = f"lstmlm {command}"  # argparse's usage and errors name the command
    try:
        if command == "push":
            module.main(rest, prog=sys.argv[0])
        else:
            module.main(rest)  # what it returns (a result dict) is for Python callers: the exit status is 0
    finally:
        sys.argv[0] = program
    return 0


if __name__ == "__main__":
    sys.exit(main())
