"""Export a saved LSTMLM causal LM to ONNX: `prefill.onnx` and `decode_step.onnx` (the state as explicit inputs and
outputs), then check them against PyTorch on onnxruntime. `--int8` writes int8 graphs instead (the fastest CPU path).

    python scripts/export_onnx.py --model runs/demo --output_dir runs/demo-onnx
    python scripts/onnx_generate.py --onnx_dir runs/demo-onnx --prompt "ROMEO:"      # generate with onnxruntime
    python scripts/export_onnx.py --smoke                                             # a tiny random model

    python scripts/export_onnx.py --model runs/demo --output_dir runs/demo-onnx-int8 --int8 \\
        --eval_file data/tinyshakespeare/input.txt --eval_lines 38000:40000   # float vs int8 ONNX perplexity
    python scripts/export_onnx.py --from_onnx_dir runs/demo-onnx --output_dir runs/demo-onnx-int8 --int8
    python scripts/export_onnx.py --smoke --int8

The output folder gets the two graphs, `onnx_config.json`, the model's tokenizer (when it has one),
`export_args.json` (the resolved arguments) and `verification.json`: the largest differences between onnxruntime and
PyTorch on sample prompts (prefill logits and state, one decoding step) and whether greedy ids are equal; the script
fails if a float export's greedy ids differ from PyTorch's.

With `--int8`, the float export goes to a temporary folder (or is read from `--from_onnx_dir`) and
`onnx_export.quantize_onnx` writes the int8 graphs to `--output_dir` (onnxruntime's `quantize_dynamic`: int8 weights
for the LSTM op, every MatMul and the output layer, the embedding in 8 bits, activations quantized on each call; see
modeling_lstmlm/onnx_export.py). `verification.json` then holds three blocks: `float_onnx_vs_pytorch` (must agree, as
above), `int8_onnx_vs_pytorch` and `int8_vs_float_onnx` (differences and greedy ids, reported, not enforced), plus
`weights` (file and initializer bytes by dtype of both folders). With `--eval_file`, `perplexity.json` holds the token-
and word-level perplexity of the text through the decode-step graph (one token at a time, as `generate` runs) for the
float folder and, with `--int8`, the int8 folder, and the relative change.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import modeling_lstmlm  # noqa: F401  (registers the model with the Auto classes)
from lstmlm.commands._common import HelpFormatter, bundled_text, check_model_path
from modeling_lstmlm.data import parse_line_range, read_text, select_lines
from modeling_lstmlm.onnx_export import (
    DEFAULT_OPSET,
    OnnxLSTMLM,
    compare_onnx,
    compare_with_model,
    evaluate_text_onnx,
    export_onnx,
    onnx_weight_summary,
    quantize_onnx,
)
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer
from modeling_lstmlm.smoke import tiny_model

QUANTIZER_FLAGS = ("from_onnx_dir", "per_tensor", "float_embedding", "reduce_range")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="A saved model folder (float weights) to export")
    parser.add_argument("--output_dir", type=Path, default=None, help="Where to write the ONNX folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--verify_tokens", type=int, default=16, help="Greedy tokens compared with PyTorch (0: skip)")
    parser.add_argument("--num_threads", type=int, default=0, help="onnxruntime threads for the checks (0: default)")
    parser.add_argument("--trust_remote_code", action="store_true", help="Load the model's own code from the folder")
    parser.add_argument("--int8", action="store_true", help="Write int8 graphs (onnxruntime's dynamic quantizer)")
    parser.add_argument(
        "--from_onnx_dir",
        type=Path,
        default=None,
        help="With --int8: quantize this float ONNX folder (an earlier export) instead of exporting --model",
    )
    parser.add_argument(
        "--per_tensor", action="store_true", help="With --int8: one weight scale per tensor, not per output channel"
    )
    parser.add_argument("--float_embedding", action="store_true", help="With --int8: keep the embedding in float32")
    parser.add_argument(
        "--reduce_range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="With --int8: 7-bit weights (onnxruntime's advice without VNNI); default: on when this CPU lacks VNNI",
    )
    parser.add_argument("--eval_file", type=Path, default=None, help="Held-out text: perplexity of the ONNX folders")
    parser.add_argument("--eval_lines", default=None, help="Lines 'start:end' of --eval_file to score (default all)")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder for --eval_file (default: the model's)")
    parser.add_argument("--show_progress", action="store_true", help="Progress bars while scoring")
    parser.add_argument("--smoke", action="store_true", help="A tiny random model and a few lines of text (seconds)")
    args = parser.parse_args(argv)
    check_model_path(args.model, "--model")
    sources = [name for name in ("model", "from_onnx_dir", "smoke") if getattr(args, name)]
    if len(sources) != 1:
        parser.error("give exactly one of --model, --from_onnx_dir (with --int8) or --smoke")
    if not args.int8:
        used = [f"--{name}" for name in QUANTIZER_FLAGS if getattr(args, name)]
        if used:
            parser.error(f"{', '.join(used)}: apply only with --int8")
    if args.output_dir is None:
        if args.smoke:
            args.output_dir = Path("runs/onnx-int8-smoke" if args.int8 else "runs/onnx-smoke")
        else:
            parser.error("--output_dir is required")
    if args.verify_tokens < 0:
        parser.error("--verify_tokens must be >= 0")
    if args.eval_lines is not None and args.eval_file is None and not args.smoke:
        parser.error("--eval_lines needs --eval_file")
    return args


def sample_prompts(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded rows of different lengths (ids away from the special tokens)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, vocab_size, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def load_source(args: argparse.Namespace):
    """The PyTorch model (None with --from_onnx_dir) and the tokenizer (None when there is none)."""
    if args.smoke:
        tokenizer = AutoTokenizer.from_pretrained(packaged_tokenizer())
        args.eval_file = args.eval_file or bundled_text()
        args.eval_lines = args.eval_lines or "38000:38020"
        return tiny_model(tokenizer, hidden_size=16, num_hidden_layers=2), tokenizer
    source = args.model or args.from_onnx_dir
    tokenizer_dir = args.tokenizer or (source if (Path(source) / "tokenizer_config.json").is_file() else None)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir is not None else None
    if args.model is None:
        return None, tokenizer
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    return model, tokenizer


def verify(args, model, float_dir: Path) -> dict:
    """Differences between the written folder(s) and PyTorch (and, with --int8, between int8 and float ONNX)."""
    float_onnx = OnnxLSTMLM(float_dir, args.num_threads)
    ids, mask = sample_prompts_for(float_dir)
    if not args.int8:
        return compare_with_model(model, float_onnx, ids, mask, max_new_tokens=args.verify_tokens)
    int8_onnx = OnnxLSTMLM(args.output_dir, args.num_threads)
    report = {}
    if model is not None:
        report["float_onnx_vs_pytorch"] = compare_with_model(model, float_onnx, ids, mask, args.verify_tokens)
        report["int8_onnx_vs_pytorch"] = compare_with_model(model, int8_onnx, ids, mask, args.verify_tokens)
    report["int8_vs_float_onnx"] = compare_onnx(float_onnx, int8_onnx, ids.numpy(), mask.numpy(), args.verify_tokens)
    return report


def sample_prompts_for(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return sample_prompts(json.loads((folder / "onnx_config.json").read_text())["vocab_size"])


def perplexities(args, tokenizer, float_dir: Path) -> dict:
    if tokenizer is None:
        raise SystemExit("--eval_file needs a tokenizer: the source folder has none, pass --tokenizer")
    text = read_text(args.eval_file)
    if args.eval_lines is not None:
        text = select_lines(text, *parse_line_range(args.eval_lines))
    folders = {"float_onnx": float_dir} | ({"int8_onnx": args.output_dir} if args.int8 else {})
    report = {}
    for name, folder in folders.items():
        generator = OnnxLSTMLM(folder, args.num_threads)
        result = evaluate_text_onnx(generator, tokenizer, text, show_progress=args.show_progress)
        report[name] = {key: value for key, value in result.to_dict().items() if key != "nll_sum"}
    if args.int8:
        report["relative_change"] = {
            key: report["int8_onnx"][key] / report["float_onnx"][key] - 1
            for key in ("token_perplexity", "word_perplexity")
        }
    return report


def print_summary(verification: dict, report: dict, args) -> None:
    if not args.int8:
        for key in ("prefill_logits_max_abs_diff", "prefill_state_max_abs_diff", "step_logits_max_abs_diff"):
            print(f"{key:32s} {verification[key]:.3g}")
        print(f"{'greedy ids equal':32s} {verification['greedy_ids_equal']}")
    else:
        for name, sizes in verification.get("weights", {}).items():
            cells = []
            for graph, values in sizes.items():
                dtypes = ", ".join(f"{dtype} {size / 1e6:.2f}" for dtype, size in values["initializer_bytes"].items())
                cells.append(f"{graph} {values['file_bytes'] / 1e6:.2f} MB ({dtypes})")
            print(f"{name:11s} " + "; ".join(cells))
        for name, block in verification.items():
            if name == "weights":
                continue
            diffs = ", ".join(
                f"{key.replace('_max_abs_diff', '')} {value:.3g}"
                for key, value in block.items()
                if key.endswith("max_abs_diff")
            )
            print(f"{name:24s} max |diff|: {diffs}; greedy ids equal: {block['greedy_ids_equal']}")
    if report:
        columns = [name for name in ("float_onnx", "int8_onnx") if name in report]
        print(f"{'perplexity (decode step)':<26}" + "".join(f"{name:>14}" for name in columns), end="")
        print(f"{'change':>10}" if args.int8 else "")
        for key in ("token_perplexity", "word_perplexity"):
            print(f"{key:<26}" + "".join(f"{report[name][key]:>14.3f}" for name in columns), end="")
            print(f"{report['relative_change'][key]:>+10.2%}" if args.int8 else "")


def export(args: argparse.Namespace, tmp: Path) -> dict:
    model, tokenizer = load_source(args)
    float_dir = args.from_onnx_dir or (tmp / "float" if args.int8 else args.output_dir)
    if model is not None:
        export_onnx(model, float_dir, opset_version=args.opset)
    if args.int8:
        quantize_onnx(
            float_dir,
            args.output_dir,
            per_channel=not args.per_tensor,
            reduce_range=args.reduce_range,
            quantize_embedding=not args.float_embedding,
        )
    if tokenizer is not None:
        tokenizer.save_pretrained(args.output_dir)
    resolved = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    (args.output_dir / "export_args.json").write_text(json.dumps(resolved, indent=2) + "\n")
    origin = f"quantized from {args.from_onnx_dir}" if args.from_onnx_dir else "quantized from a temporary float export"
    print(f"Wrote {args.output_dir}" + (f" (int8, {origin})" if args.int8 else ""))

    verification = {}
    if args.verify_tokens:
        verification = verify(args, model, float_dir)
    if args.int8:
        verification["weights"] = {
            "float_onnx": onnx_weight_summary(float_dir),
            "int8_onnx": onnx_weight_summary(args.output_dir),
        }
    if verification:
        (args.output_dir / "verification.json").write_text(json.dumps(verification, indent=2) + "\n")
    report = {}
    if args.eval_file is not None:
        report = perplexities(args, tokenizer, float_dir)
        (args.output_dir / "perplexity.json").write_text(json.dumps(report, indent=2) + "\n")
    print_summary(verification, report, args)
    float_check = verification.get("float_onnx_vs_pytorch", verification)
    if float_check.get("greedy_ids_equal") is False:
        raise SystemExit("onnxruntime's greedy ids (float export) differ from PyTorch's (see verification.json)")
    return {"verification": verification, "perplexity": report}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        return export(args, Path(tmp))


if __name__ == "__main__":
    main()
