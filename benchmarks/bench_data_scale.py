"""Corpora of any size: tokenizing into a token file and starting training, in flat memory.

For each corpus size the script generates a corpus of real-looking text itself (the lines of the bundled corpora
under data/, and of /work/shared/data when it exists, shuffled with a fixed seed and repeated with a new shuffle
each pass), then, each in a fresh process whose peak resident set size is read from the kernel (`wait4`'s
`ru_maxrss`, the whole process: torch, tokenizer threads and all):

1. `scripts/train.py --train_file BIG --max_steps 20` with the recipe's model (recipes/tinyshakespeare.json) and a
   cold token cache: the corpus is tokenized into a token file (`modeling_lstmlm.data.prepare_token_file`) and
   20 optimizer steps run from its memory map;
2. the bare `tokenizers` library encoding the same file's lines in batches of 2,000 (`Tokenizer.encode_batch`, the
   ids read out of every encoding), with the same tokenizer and the same threads (`RAYON_NUM_THREADS`).

The throughput ratio (1 over 2), measured side by side in one run, is what to read on a busy machine. Results are
written to runs/benchmarks/bench_data_scale.json; the corpora and caches are deleted afterwards.

    nice -n 10 python benchmarks/bench_data_scale.py --sizes 100M,300M,1G
"""

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path("/work/shared/data")
RESULTS = REPO_ROOT / "runs" / "benchmarks" / "bench_data_scale.json"
GIB = 1 << 30

BASELINE = r"""
import sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
path, batch_lines = sys.argv[2], 2000
start = time.monotonic()
num_tokens = 0
with open(path, encoding="utf-8") as file:
    lines = []
    for line in file:
        lines.append(line)
        if len(lines) == batch_lines:
            num_tokens += sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
            lines = []
    if lines:
        num_tokens += sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
print(num_tokens, time.monotonic() - start)
"""


def parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def source_lines() -> list[str]:
    files = sorted((REPO_ROOT / "data").rglob("*.txt"))
    if SHARED_DATA.is_dir():
        files += sorted(SHARED_DATA.rglob("*.txt"))
    lines = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines.extend(line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True))
    return lines


def make_corpus(path: Path, size: int, lines: list[str], seed: int = 0) -> int:
    """Shuffled lines, a new shuffle each pass, until `size` bytes."""
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as file:
        while written < size:
            order = lines[:]
            rng.shuffle(order)
            for line in order:
                file.write(line)
                written += len(line.encode("utf-8"))
                if written >= size:
                    break
    return written


def run_measured(command: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(returncode, seconds, peak RSS in GiB) of a child process, its output to `log`."""
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.monotonic() - start, usage.ru_maxrss * 1024 / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", default="100M,300M,1G", help="Corpus sizes in bytes (K/M/G suffixes), comma-separated."
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Tokenizer threads (RAYON_NUM_THREADS).")
    parser.add_argument("--max_steps", type=int, default=20, help="Training steps after tokenizing.")
    parser.add_argument("--workdir", default=None, help="Scratch folder (default: a temporary folder under /tmp).")
    parser.add_argument("--keep", action="store_true", help="Keep the generated corpora and token files.")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-data-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        RAYON_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="true",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    lines = source_lines()
    print(f"{len(lines):,} source lines; scratch in {workdir}; {args.threads} tokenizer threads", flush=True)
    rows = []
    try:
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            corpus = workdir / f"corpus-{size_text.strip()}.txt"
            written = make_corpus(corpus, size, lines)
            cache, output = workdir / f"cache-{size_text}", workdir / f"run-{size_text}"
            command = [
                sys.executable, "scripts/train.py", "--config", "recipes/tinyshakespeare.json",
                "--train_file", str(corpus), "--validation_split_percentage", "0", "--max_steps", str(args.max_steps),
                "--output_dir", str(output), "--cache_dir", str(cache), "--save_strategy", "no",
                "--logging_steps", "10", "--disable_tqdm", "true", "--eval_strategy", "no",
            ]  # fmt: skip
            code, train_seconds, train_rss = run_measured(command, env, workdir / f"train-{size_text}.log")
            if code != 0:
                raise SystemExit(f"train.py failed: see {workdir / f'train-{size_text}.log'}")
            manifest = json.loads(next(cache.glob("tokens-*.json")).read_text())
            disk = sum(path.stat().st_size for path in cache.glob("tokens-*.bin"))
            code, _, base_rss = run_measured(
                [sys.executable, "-c", BASELINE, str(REPO_ROOT / "tokenizer" / "tokenizer.json"), str(corpus)],
                env,
                workdir / f"baseline-{size_text}.log",
            )
            base_tokens, base_seconds = (float(x) for x in (workdir / f"baseline-{size_text}.log").read_text().split())
            ours = manifest["num_tokens"] / manifest["seconds"]
            bare = base_tokens / base_seconds
            row = {
                "size": size_text,
                "text_bytes": written,
                "tokens": manifest["num_tokens"],
                "tokenize_seconds": manifest["seconds"],
                "tokens_per_second": ours,
                "bare_tokenizers_tokens": int(base_tokens),
                "bare_tokenizers_tokens_per_second": bare,
                "ratio": ours / bare,
                "disk_bytes": disk,
                "disk_bytes_per_token": disk / manifest["num_tokens"],
                "text_bytes_per_token": written / manifest["num_tokens"],
                "train_py_seconds": train_seconds,
                "train_py_peak_rss_gib": train_rss,
                "bare_tokenizers_peak_rss_gib": base_rss,
                "load_average": os.getloadavg()[0],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep:
                for path in (corpus, cache, output):
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        "| text | tokens | tokenize s | tokens/s | bare tokenizers tokens/s | ratio | disk B/token "
        "| peak RSS GiB (train.py) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['text_bytes'] / 1e6:,.0f} MB | {r['tokens'] / 1e6:,.1f} M | {r['tokenize_seconds']:,.0f} | "
            f"{r['tokens_per_second']:,.0f} | {r['bare_tokenizers_tokens_per_second']:,.0f} | {r['ratio']:.2f} | "
            f"{r['disk_bytes_per_token']:.3f} | {r['train_py_peak_rss_gib']:.2f} |"
        )
    if rows:
        last = rows[-1]
        seconds_per_byte = last["tokenize_seconds"] / last["text_bytes"]
        tokens_10g = 10e9 / last["text_bytes_per_token"]
        print(
            f"10 GB extrapolated from {last['size']}: {tokens_10g / 1e9:.2f} G tokens, "
            f"{seconds_per_byte * 10e9 / 3600:.1f} h to tokenize, "
            f"{tokens_10g * last['disk_bytes_per_token'] / GIB:.1f} GiB "
            f"on disk, peak RSS flat (~{max(r['train_py_peak_rss_gib'] for r in rows):.2f} GiB)"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"args": vars(args), "machine": platform.platform(), "cores": os.cpu_count(), "rows": rows}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
