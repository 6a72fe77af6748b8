"""Generate text from a saved model folder (or a Hub id) with the usual decoding options.

    python scripts/generate.py --model runs/demo --prompt "ROMEO:" --max_new_tokens 100 --do_sample --top_p 0.9
    python scripts/generate.py --model runs/demo --prompt "ROMEO:" --num_beams 4      # beam search
    python scripts/generate.py --smoke                                                 # a tiny random model

The output (prompt, continuations, resolved arguments) is printed, and written as JSON with `--output_file`.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

import modeling_lstmlm  # noqa: F401  (registers the model with the Auto classes)
from lstmlm.commands._common import HelpFormatter, check_model_path
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer
from modeling_lstmlm.smoke import save_tiny_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="A saved model folder or Hub id (with its tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder or Hub id (default: the model's)")
    parser.add_argument("--prompt", default="ROMEO:", help="The text to continue")
    parser.add_argument("--max_new_tokens", type=int, default=100, help="Tokens to generate")
    parser.add_argument("--do_sample", action="store_true", help="Sample (default: greedy, or beam search)")
    parser.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature when sampling")
    parser.add_argument("--top_k", type=int, default=50, help="Sample among the k likeliest tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling: smallest set with this mass")
    parser.add_argument("--num_beams", type=int, default=1, help="Beam search width (1: no beam search)")
    parser.add_argument("--repetition_penalty", type=float, default=1.0, help="Penalty > 1 on repeated tokens")
    parser.add_argument("--no_repeat_ngram_size", type=int, default=0, help="Forbid repeating n-grams of this size")
    parser.add_argument("--num_return_sequences", type=int, default=1, help="Continuations per prompt")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (sampling)")
    parser.add_argument("--trust_remote_code", action="store_true", help="Load the model's own code from the folder")
    parser.add_argument("--output_file", type=Path, default=None, help="Also write the result as JSON here")
    parser.add_argument("--smoke", action="store_true", help="Generate a few tokens with a tiny random model")
    args = parser.parse_args(argv)
    check_model_path(args.model, "--model")
    check_model_path(args.tokenizer, "--tokenizer")
    for name in ("max_new_tokens", "num_beams", "num_return_sequences"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.temperature <= 0:
        parser.error("--temperature must be > 0")
    if not 0 < args.top_p <= 1:
        parser.error("--top_p must be in (0, 1]")
    if args.model is None and not args.smoke:
        parser.error("--model is required (or --smoke)")
    return args


def generate(args: argparse.Namespace) -> dict:
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    if tokenizer.bos_token_id is not None:  # the model was trained on <bos> + text
        bos = torch.tensor([[tokenizer.bos_token_id]])
        inputs["input_ids"] = torch.cat([bos, inputs["input_ids"]], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    options = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        num_return_sequences=args.num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
    )
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    with torch.no_grad():
        output = model.generate(**inputs, **options)
    prompt_length = inputs["input_ids"].shape[1]
    continuations = [tokenizer.decode(row[prompt_length:], skip_special_tokens=True) for row in output]
    return {"prompt": args.prompt, "continuations": continuations, "arguments": vars(args) | {"output_file": None}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:  # --smoke
            args.model = save_tiny_model(Path(tmp) / "tiny", packaged_tokenizer())
            args.max_new_tokens = min(args.max_new_tokens, 8)
        result = generate(args)
    for i, text in enumerate(result["continuations"]):
        header = f"--- continuation {i + 1} ---" if len(result["continuations"]) > 1 else "---"
        print(header)
        print(args.prompt + text)
    if args.output_file is not None:
        result["arguments"]["output_file"] = str(args.output_file)
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
