"""Export a saved LSTMLM causal LM to ONNX: `prefill.onnx` and `decode_step.onnx` (the state as explicit inputs and
outputs), then check them against PyTorch on onnxruntime.

    python scripts/export_onnx.py --model runs/demo --output_dir runs/demo-onnx
    python scripts/onnx_generate.py --onnx_dir runs/demo-onnx --prompt "ROMEO:"      # generate with onnxruntime
    python scripts/export_onnx.py --smoke                                             # a tiny random model

The output folder gets the two graphs, `onnx_config.json`, the model's tokenizer (when it has one),
`export_args.json` (the resolved arguments) and `verification.json`: the largest differences between onnxruntime and
PyTorch on sample prompts (prefill logits and state, one decoding step) and whether greedy ids are equal.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import modeling_lstmlm  # noqa: E402, F401  (registers the model with the Auto classes)
from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM  # noqa: E402
from modeling_lstmlm.onnx_export import DEFAULT_OPSET, OnnxLSTMLM, compare_with_model, export_onnx  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A saved model folder (float weights) to export")
    parser.add_argument("--output_dir", type=Path, default=None, help="Where to write the ONNX folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--verify_tokens", type=int, default=16, help="Greedy tokens compared with PyTorch (0: skip)")
    parser.add_argument("--num_threads", type=int, default=0, help="onnxruntime threads for the check (0: default)")
    parser.add_argument("--trust_remote_code", action="store_true", help="Load the model's own code from the folder")
    parser.add_argument("--smoke", action="store_true", help="Export a tiny random model (seconds)")
    args = parser.parse_args(argv)
    if args.model is None and not args.smoke:
        parser.error("--model is required (or --smoke)")
    if args.output_dir is None:
        if args.smoke:
            args.output_dir = Path("runs/onnx-smoke")
        else:
            parser.error("--output_dir is required")
    if args.verify_tokens < 0:
        parser.error("--verify_tokens must be >= 0")
    return args


def tiny_model() -> LSTMLMForCausalLM:
    torch.manual_seed(0)
    config = LSTMLMConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, embedding_size=8)
    return LSTMLMForCausalLM(config).eval()


def sample_prompts(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded rows of different lengths (ids away from the special tokens)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, vocab_size, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        model = tiny_model()
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    paths = export_onnx(model, args.output_dir, opset_version=args.opset)
    if args.model is not None and (Path(args.model) / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(args.model).save_pretrained(args.output_dir)
    (args.output_dir / "export_args.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
    print(f"Wrote {', '.join(str(p) for p in paths.values())}")

    report = {}
    if args.verify_tokens:
        generator = OnnxLSTMLM(args.output_dir, num_threads=args.num_threads)
        ids, mask = sample_prompts(model.config.vocab_size)
        report = compare_with_model(model, generator, ids, mask, max_new_tokens=args.verify_tokens)
        (args.output_dir / "verification.json").write_text(json.dumps(report, indent=2) + "\n")
        for key in ("prefill_logits_max_abs_diff", "prefill_state_max_abs_diff", "step_logits_max_abs_diff"):
            print(f"{key:32s} {report[key]:.3g}")
        print(f"{'greedy ids equal':32s} {report['greedy_ids_equal']}")
        if not report["greedy_ids_equal"]:
            raise SystemExit("onnxruntime's greedy ids differ from PyTorch's (see verification.json)")
    return report


if __name__ == "__main__":
    main()
