"""Train the project's byte-level BPE tokenizer and save it with a record of how it was made.

    python scripts/train_tokenizer.py            # rebuild the committed tokenizer/ from the corpus in data/
    python scripts/train_tokenizer.py --smoke    # tiny vocabulary on a slice of the corpus, into a temp folder

The output folder is what `modeling_lstmlm.tokenization.save_tokenizer` writes (loadable with
`AutoTokenizer.from_pretrained`) plus `tokenizer_training.json`: the files (paths relative to the
repository root, sha256), the arguments, and the library versions. Same corpus and arguments, same files.
"""

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import tokenizers
import transformers
from transformers import AutoTokenizer

from lstmlm.commands._common import CHECKOUT, HelpFormatter
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer
from modeling_lstmlm.tokenization import (
    DEFAULT_MIN_FREQUENCY,
    DEFAULT_VOCAB_SIZE,
    default_tokenizer_files,
    save_tokenizer,
    train_tokenizer,
)

SMOKE_VOCAB_SIZE = 512
SMOKE_LINES_PER_FILE = 200
SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak. 👋 世界"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--files",
        nargs="+",
        type=Path,
        default=None,
        help="UTF-8 text files to train on (default: the committed corpus listed in data/README.md)",
    )
    parser.add_argument(
        "--vocab_size",
        type=int,
        default=None,
        help=f"vocabulary size incl. 256 byte tokens and 6 special tokens "
        f"(default: {DEFAULT_VOCAB_SIZE}, or {SMOKE_VOCAB_SIZE} with --smoke)",
    )
    parser.add_argument(
        "--min_frequency",
        type=int,
        default=DEFAULT_MIN_FREQUENCY,
        help=f"a pair must occur this often to be merged (default: {DEFAULT_MIN_FREQUENCY})",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="folder to write (default: tokenizer/ in the repository, or a temporary folder with --smoke)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"CI check: the first {SMOKE_LINES_PER_FILE} lines of each file, vocab {SMOKE_VOCAB_SIZE}, "
        "then reload the saved folder and check a round trip",
    )
    return parser.parse_args(argv)


def display_path(path: Path) -> str:
    """A path relative to the repository root when it lies inside it, so the record is machine-independent."""
    resolved = path.resolve()
    return resolved.relative_to(CHECKOUT).as_posix() if resolved.is_relative_to(CHECKOUT) else str(resolved)


def train_and_save(args: argparse.Namespace, output_dir: Path, work_dir: Path) -> None:
    files = args.files if args.files is not None else default_tokenizer_files(CHECKOUT)
    train_files = files
    if args.smoke:  # train on a slice of each file, written to work_dir
        train_files = []
        for index, file in enumerate(files):
            head = "".join(file.read_text(encoding="utf-8").splitlines(keepends=True)[:SMOKE_LINES_PER_FILE])
            train_files.append(work_dir / f"{index:03d}-{file.name}")
            train_files[-1].write_text(head, encoding="utf-8")

    start = time.perf_counter()
    tokenizer = train_tokenizer(train_files, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    seconds = time.perf_counter() - start

    record = {
        "files": [
            {"path": display_path(file), "sha256": hashlib.sha256(trained.read_bytes()).hexdigest()}
            for file, trained in zip(files, train_files, strict=True)
        ],
        "smoke_lines_per_file": SMOKE_LINES_PER_FILE if args.smoke else None,
        "vocab_size": args.vocab_size,
        "min_frequency": args.min_frequency,
        "trained_vocab_size": len(tokenizer),
        "tokenizers_version": tokenizers.__version__,
        "transformers_version": transformers.__version__,
    }
    save_tokenizer(
        tokenizer,
        output_dir,
        extra_files={"tokenizer_training.json": json.dumps(record, indent=2, ensure_ascii=False) + "\n"},
    )

    ids = tokenizer(SAMPLE).input_ids
    print(f"trained on {len(files)} files in {seconds:.1f} s; vocabulary {len(tokenizer)} -> {output_dir}")
    print(f"sample {SAMPLE!r}: {len(SAMPLE)} characters -> {len(ids)} tokens")
    print(f"  {tokenizer.convert_ids_to_tokens(ids)}")

    if args.smoke:
        reloaded = AutoTokenizer.from_pretrained(output_dir)
        decoded = reloaded.decode(reloaded(SAMPLE).input_ids)
        if reloaded.pad_token_id != 1 or reloaded.eos_token_id != 0 or decoded != SAMPLE:
            raise SystemExit(f"smoke check failed: reloaded tokenizer decodes the sample to {decoded!r}")
        print("smoke check passed: the saved folder reloads with AutoTokenizer and round-trips the sample")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.vocab_size is None:
        args.vocab_size = SMOKE_VOCAB_SIZE if args.smoke else DEFAULT_VOCAB_SIZE
    with tempfile.TemporaryDirectory(prefix="train_tokenizer-") as work_dir:
        output_dir = args.output_dir
        if output_dir is None:
            output_dir = Path(work_dir) / "tokenizer" if args.smoke else packaged_tokenizer()
        train_and_save(args, output_dir, Path(work_dir))


if __name__ == "__main__":
    main()
