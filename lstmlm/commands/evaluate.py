"""Token-level and word-level perplexity of a saved model on held-out text.

    python scripts/evaluate.py --model runs/demo --text_file data/tinyshakespeare/input.txt --lines 38000:40000
    python scripts/evaluate.py --model runs/demo --text_file data/wikitext-2/valid.txt
    python scripts/evaluate.py --model runs/demo --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 \\
        --split test --rows_are_lines
    python scripts/evaluate.py --smoke                                  # a tiny random model on a few lines

Each text is scored as one stream (`<bos> + tokens(text)`), window after window with the LSTM state carried, so
every token is predicted from the whole text before it. Word-level perplexity divides the same summed NLL by the
number of words (whitespace-separated tokens plus one per line end, as pytorch/examples word_language_model counts
them), so it compares models with different tokenizers. The results and the resolved arguments are written as JSON
(`--output_file`, default `<model>/eval_<name>.json` for a local model folder).
"""

import argparse
import json
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

import modeling_lstmlm  # noqa: F401  (registers the model with the Auto classes)
from lstmlm.commands._common import HelpFormatter, bundled_text, check_model_path
from modeling_lstmlm.data import DataSource, load_split_texts, parse_line_range, read_text, select_lines
from modeling_lstmlm.evaluation import evaluate_text
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer
from modeling_lstmlm.smoke import save_tiny_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="A saved model folder or Hub id")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder or Hub id (default: the model's)")
    parser.add_argument("--text_file", nargs="+", type=Path, default=None, help="UTF-8 text files, each scored alone")
    parser.add_argument("--lines", default=None, help="Score only lines 'start:end' of each text file")
    parser.add_argument("--dataset_name", default=None, help="A dataset on the Hub (via `datasets`)")
    parser.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name")
    parser.add_argument("--split", default="test", help="The dataset split to score")
    parser.add_argument("--text_column", default="text", help="The dataset column holding the text")
    parser.add_argument("--rows_are_lines", action="store_true", help="The dataset rows are lines of one text")
    parser.add_argument("--window", type=int, default=256, help="Tokens per forward pass (the state is carried)")
    parser.add_argument("--stride", type=int, default=None, help="Models without a state: new tokens per window")
    parser.add_argument("--cache_dir", default=None, help="Cache the tokenized text here")
    parser.add_argument("--trust_remote_code", action="store_true", help="Load the model's own code from the folder")
    parser.add_argument("--output_file", type=Path, default=None, help="Where to write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="A tiny random model on a few lines of tinyshakespeare")
    args = parser.parse_args(argv)
    check_model_path(args.model, "--model")
    if args.smoke:
        args.text_file = args.text_file or [bundled_text()]
        args.lines = args.lines or "0:40"
    if args.model is None and not args.smoke:
        parser.error("--model is required (or --smoke)")
    if (args.text_file is None) == (args.dataset_name is None):
        parser.error("give exactly one of --text_file or --dataset_name")
    if args.window < 1:
        parser.error("--window must be >= 1")
    return args


def load_texts(args: argparse.Namespace) -> dict[str, str]:
    if args.text_file is not None:
        texts = {}
        for path in args.text_file:
            text = read_text(path)
            if args.lines is not None:
                text = select_lines(text, *parse_line_range(args.lines))
            texts[path.stem if args.lines is None else f"{path.stem}[{args.lines}]"] = text
        return texts
    source = DataSource(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        text_column=args.text_column,
        train_split=args.split,
        rows_are_lines=args.rows_are_lines,
        validation_split_percentage=0,
        test_lines=args.lines,
    )
    docs = load_split_texts(source)["train"]
    return {f"{args.dataset_name}/{args.split}": "\n".join(docs) if len(docs) > 1 else docs[0]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:  # --smoke
            args.model = save_tiny_model(Path(tmp) / "tiny", packaged_tokenizer())
            args.output_file = args.output_file or Path("runs") / "smoke_eval.json"
        tokenizer = AutoTokenizer.from_pretrained(
            args.tokenizer or args.model, trust_remote_code=args.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
        results = {}
        for name, text in load_texts(args).items():
            result = evaluate_text(
                model,
                tokenizer,
                text,
                window=args.window,
                stride=args.stride,
                cache_dir=args.cache_dir,
                show_progress=True,
            )
            results[name] = result.to_dict()
        output = {"model": args.model, "results": results, "arguments": vars(args)}
        output_file = args.output_file
        if output_file is None:
            folder = Path(args.model)
            stem = "_".join(
                name.replace("/", "-").replace("[", "_").replace("]", "").replace(":", "-") for name in results
            )
            output_file = (folder if folder.is_dir() else Path("runs")) / f"eval_{stem}.json"
        output_file.parent.mkdir(parents=True, exist_ok=True)
        output_file.write_text(json.dumps(output, indent=2, default=str) + "\n")

    print(f"{'text':<32}{'tokens':>9}{'words':>9}{'loss':>9}{'token ppl':>12}{'word ppl':>12}")
    for name, r in results.items():
        print(
            f"{name:<32}{r['num_tokens']:>9}{r['num_words']:>9}{r['loss']:>9.4f}"
            f"{r['token_perplexity']:>12.2f}{r['word_perplexity']:>12.2f}"
        )
    print(f"results: {output_file}")
    return output


if __name__ == "__main__":
    main()
