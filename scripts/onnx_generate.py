"""Greedy generation with onnxruntime from a folder written by scripts/export_onnx.py (no PyTorch model needed).

    python scripts/onnx_generate.py --onnx_dir runs/demo-onnx --prompt "ROMEO:" --max_new_tokens 50
    python scripts/onnx_generate.py --onnx_dir runs/demo-onnx --prompt "ROMEO:" --compare_model runs/demo
    python scripts/onnx_generate.py --smoke       # export a tiny random model, generate, compare with PyTorch
    python scripts/onnx_generate.py --onnx_dir runs/demo-onnx-int8 --prompt "ROMEO:"  # an int8 folder, the same way

The prompt is encoded with the folder's tokenizer (or `--tokenizer`) behind the `<bos>` token, as scripts/generate.py
does. `--compare_model` also runs `generate(do_sample=False)` on the PyTorch model and, for a float folder, fails unless
the ids are equal; an int8 folder (`scripts/export_onnx.py --int8`, `quantization` in its onnx_config.json) has other
logits by design, so its comparison is reported only. The result (text, ids, resolved arguments) is printed, and
written as JSON with `--output_file`.
"""

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from modeling_lstmlm.onnx_export import OnnxLSTMLM  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx_dir", type=Path, default=None, help="A folder written by scripts/export_onnx.py")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the ONNX folder's)")
    parser.add_argument("--prompt", default="ROMEO:", help="The text to continue")
    parser.add_argument("--max_new_tokens", type=int, default=50, help="Tokens to generate (greedy)")
    parser.add_argument("--num_threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument(
        "--compare_model", default=None, help="A saved PyTorch model folder: check that its greedy ids are the same"
    )
    parser.add_argument("--output_file", type=Path, default=None, help="Also write the result as JSON here")
    parser.add_argument("--smoke", action="store_true", help="Export a tiny random model and compare (seconds)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("--max_new_tokens must be >= 1")
    if args.onnx_dir is None and not args.smoke:
        parser.error("--onnx_dir is required (or --smoke)")
    return args


def make_smoke_folders(tmp: Path) -> tuple[Path, Path]:
    """A tiny random model with the repository's tokenizer, saved, and its ONNX export."""
    from modeling_lstmlm.onnx_export import export_onnx
    from modeling_lstmlm.smoke import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    model = tiny_model(tokenizer, hidden_size=16, num_hidden_layers=2)
    model_dir, onnx_dir = tmp / "model", tmp / "onnx"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    export_onnx(model, onnx_dir)
    tokenizer.save_pretrained(onnx_dir)
    return model_dir, onnx_dir


def pytorch_greedy(model_dir: str, input_ids: np.ndarray, max_new_tokens: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    import modeling_lstmlm  # noqa: F401  (registers the model with the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    output = model.generate(torch.from_numpy(input_ids), max_new_tokens=max_new_tokens, do_sample=False)
    return output.tolist()


def run(args: argparse.Namespace) -> dict:
    if args.tokenizer is None and not (Path(args.onnx_dir) / "tokenizer_config.json").is_file():
        raise SystemExit(f"{args.onnx_dir} holds no tokenizer: pass --tokenizer (a tokenizer folder)")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.onnx_dir)
    ids = tokenizer(args.prompt)["input_ids"]
    if tokenizer.bos_token_id is not None:  # the model was trained on <bos> + text
        ids = [tokenizer.bos_token_id] + ids
    input_ids = np.asarray([ids], dtype=np.int64)
    generator = OnnxLSTMLM(args.onnx_dir, num_threads=args.num_threads)
    output = generator.greedy_generate(input_ids, max_new_tokens=args.max_new_tokens)
    result = {
        "quantization": generator.config.get("quantization"),
        "prompt": args.prompt,
        "continuation": tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True),
        "ids": output.tolist(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if args.compare_model is not None:
        expected = pytorch_greedy(args.compare_model, input_ids, args.max_new_tokens)
        result["pytorch_ids_equal"] = expected == result["ids"]
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            model_dir, onnx_dir = make_smoke_folders(Path(tmp))
            args.onnx_dir = args.onnx_dir or onnx_dir
            args.compare_model = args.compare_model or str(model_dir)
            args.max_new_tokens = min(args.max_new_tokens, 12)
        result = run(args)
    print(args.prompt + result["continuation"])
    if "pytorch_ids_equal" in result:
        print(f"greedy ids equal to PyTorch generate(): {result['pytorch_ids_equal']}")
    if args.output_file is not None:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps(result, indent=2) + "\n")
    if result.get("pytorch_ids_equal") is False and result["quantization"] is None:
        raise SystemExit("onnxruntime's greedy ids differ from PyTorch's")
    return result


if __name__ == "__main__":
    main()
