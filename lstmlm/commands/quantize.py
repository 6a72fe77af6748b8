"""Quantize a saved LSTMLM causal LM to int8 weights for CPU inference, and write a folder the Auto classes load.

    python scripts/quantize.py --model runs/demo --output_dir runs/demo-int8
    python scripts/quantize.py --model runs/demo --output_dir runs/demo-int8 \\
        --eval_file data/tinyshakespeare/input.txt --eval_lines 38000:40000     # perplexity before and after
    python scripts/quantize.py --smoke                                           # a tiny random model

    # then, anywhere the package is installed (or with trust_remote_code=True):
    AutoModelForCausalLM.from_pretrained("runs/demo-int8").generate(...)

The LSTM layers and the output layer get int8 weights (see modeling_lstmlm/quantization.py); the folder also gets the
tokenizer, `quantize_args.json` (the resolved arguments) and, with `--eval_file`, `quantization_report.json`: token-
and word-level perplexity of the float and of the reloaded int8 model, scored one token at a time (window 1: the
decoding path that `generate` uses, on the int8 kernels) and in windows of `--eval_window` tokens (the prompt path).
"""

import argparse
import json
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

import modeling_lstmlm  # noqa: F401  (registers the model with the Auto classes)
from lstmlm.commands._common import HelpFormatter, bundled_text, check_model_path
from modeling_lstmlm.data import parse_line_range, read_text, select_lines
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer
from modeling_lstmlm.quantization import perplexity_report, quantize_model
from modeling_lstmlm.smoke import save_tiny_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="A saved float model folder (with its tokenizer)")
    parser.add_argument("--output_dir", type=Path, default=None, help="Where to write the int8 folder")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the model's)")
    parser.add_argument("--eval_file", type=Path, default=None, help="Held-out text for perplexity before and after")
    parser.add_argument("--eval_lines", default=None, help="Lines 'start:end' of --eval_file to score (default all)")
    parser.add_argument("--eval_window", type=int, default=256, help="Tokens per forward pass of the prompt-path score")
    parser.add_argument(
        "--no_reduce_range",
        action="store_true",
        help="Quantize activations to 8 bits instead of 7 (only safe on CPUs with VNNI)",
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="Load the model's own code from the folder")
    parser.add_argument("--show_progress", action="store_true", help="Progress bars while scoring")
    parser.add_argument("--smoke", action="store_true", help="A tiny random model and a few lines of text (seconds)")
    args = parser.parse_args(argv)
    check_model_path(args.model, "--model")
    if args.model is None and not args.smoke:
        parser.error("--model is required (or --smoke)")
    if args.output_dir is None:
        if not args.smoke:
            parser.error("--output_dir is required")
        args.output_dir = Path("runs/quantize-smoke")
    if args.eval_window < 1:
        parser.error("--eval_window must be >= 1")
    if args.eval_lines is not None and args.eval_file is None and not args.smoke:
        parser.error("--eval_lines needs --eval_file")
    return args


def file_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def relative_change(before: dict, after: dict) -> dict:
    return {
        window: {
            key: after[window][key] / before[window][key] - 1
            for key in ("token_perplexity", "word_perplexity")
            if before[window].get(key)
        }
        for window in before
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            tokenizer_dir = packaged_tokenizer()
            args.model = save_tiny_model(Path(tmp) / "tiny", tokenizer_dir, hidden_size=32, num_hidden_layers=2)
            args.eval_file = args.eval_file or bundled_text()
            args.eval_lines = args.eval_lines or "38000:38020"
            args.eval_window = min(args.eval_window, 32)
        return quantize(args)


def quantize(args: argparse.Namespace) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    text = None
    if args.eval_file is not None:
        text = read_text(args.eval_file)
        if args.eval_lines is not None:
            text = select_lines(text, *parse_line_range(args.eval_lines))
    windows = (1, args.eval_window)

    report = {"float_weight_bytes": file_size(args.model) if Path(args.model).is_dir() else None}
    if text is not None:
        report["float"] = perplexity_report(model, tokenizer, text, windows, show_progress=args.show_progress)

    quantize_model(model, reduce_range=not args.no_reduce_range)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    report["int8_weight_bytes"] = file_size(args.output_dir)
    report["quantization"] = model.config.quantization
    if text is not None:  # score the folder as a user gets it, reloaded through the Auto class
        reloaded = AutoModelForCausalLM.from_pretrained(args.output_dir).eval()
        report["int8"] = perplexity_report(reloaded, tokenizer, text, windows, show_progress=args.show_progress)
        report["relative_change"] = relative_change(report["float"], report["int8"])
        (args.output_dir / "quantization_report.json").write_text(json.dumps(report, indent=2) + "\n")
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.output_dir / "quantize_args.json").write_text(json.dumps(resolved, indent=2) + "\n")

    print(f"Wrote {args.output_dir} ({report['int8_weight_bytes'] / 1e6:.1f} MB of weights", end="")
    if report["float_weight_bytes"]:
        print(f", float: {report['float_weight_bytes'] / 1e6:.1f} MB", end="")
    print(")")
    if text is not None:
        print(f"{'scoring':<22}{'float word ppl':>16}{'int8 word ppl':>16}{'change':>10}")
        for window in report["float"]:
            before = report["float"][window]["word_perplexity"]
            after = report["int8"][window]["word_perplexity"]
            label = "one token at a time" if window == "window_1" else f"windows of {window.split('_')[1]}"
            print(f"{label:<22}{before:>16.2f}{after:>16.2f}{after / before - 1:>+10.2%}")
    return report


if __name__ == "__main__":
    main()
