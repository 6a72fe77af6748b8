"""Fine-tune the LSTM backbone with a classification head (semantic analysis) using the stock `Trainer`.

Data: a CSV/JSON/JSONL file (`--train_file`, optional `--validation_file` / `--test_file`), a Hub dataset
(`--dataset_name`) with a text and a label column, or one plain-text file per label (`--label_files`, the layout of MR
and SUBJ, bundled under data/; `--fold k` tests on cross-validation fold k); without any, the bundled "who is speaking"
task built from tiny-shakespeare (`--speaker_lines`, `--speaker_top_k`). Reports accuracy and macro-F1 on the validation
and test splits next to the majority-class baseline; `--compare_random_init` trains the same head, with the same
settings, on an untrained backbone of the same shape, so the value of pretraining shows.

    python scripts/finetune_classification.py --model_name_or_path runs/lm --compare_random_init \
        --output_dir runs/speakers
    python scripts/finetune_classification.py --model_name_or_path runs/lm --train_file reviews.csv \
        --text_column review --label_column sentiment --output_dir runs/reviews
    python scripts/finetune_classification.py --model_name_or_path runs/lm --fold 0 \
        --label_files neg=data/sentence_polarity/rt-polarity.neg pos=data/sentence_polarity/rt-polarity.pos \
        --output_dir runs/mr-fold0
    python scripts/finetune_classification.py --model_name_or_path runs/lm \
        --dataset_name cornell-movie-review-data/rotten_tomatoes --output_dir runs/mr-hub
    python scripts/finetune_classification.py --smoke
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
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainingArguments,
    set_seed,
)

from lstmlm.commands._common import max_steps_cap  # noqa: E402
from modeling_lstmlm import LSTMLMConfig, LSTMLMForSequenceClassification  # noqa: E402
from modeling_lstmlm.classification import (  # noqa: E402
    encode_labels,
    label_files_dataset,
    label_maps,
    load_classification_dataset,
    run_classification,
    shakespeare_speakers,
)
from modeling_lstmlm.data import parse_line_range  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", help="A saved causal-LM (or classifier) folder whose backbone is reused.")
    p.add_argument(
        "--tokenizer_name_or_path",
        help="Tokenizer folder (default: the model folder if it holds one, else the repository's tokenizer/).",
    )
    p.add_argument("--output_dir", default="runs/classification", help="Where the models and results.json go.")
    p.add_argument("--train_file", help="CSV, JSON or JSONL training file with a text and a label column.")
    p.add_argument("--validation_file", help="Validation file (default: held out from the training file).")
    p.add_argument("--test_file", help="Test file (default: held out from the training file).")
    p.add_argument(
        "--label_files",
        nargs="+",
        metavar="LABEL=PATH",
        help="One plain-text file per label, one example a line (e.g. neg=data/sentence_polarity/rt-polarity.neg "
        "pos=data/sentence_polarity/rt-polarity.pos).",
    )
    p.add_argument("--fold", type=int, help="With --label_files: test on this cross-validation fold (0-based).")
    p.add_argument("--num_folds", type=int, default=10, help="Number of cross-validation folds for --fold.")
    p.add_argument("--dataset_name", help="A Hub dataset (or local dataset folder) read with datasets.load_dataset.")
    p.add_argument("--dataset_config_name", help="The Hub dataset's configuration name.")
    p.add_argument("--text_column", default="text", help="Name of the text column.")
    p.add_argument("--label_column", default="label", help="Name of the label column.")
    p.add_argument("--held_out_fraction", type=float, default=0.1, help="Share of train held out per missing split.")
    p.add_argument(
        "--speaker_file",
        default=str(REPO_ROOT / "data/tinyshakespeare/input.txt"),
        help="Play script for the built-in speaker task (used when no file or dataset is given).",
    )
    p.add_argument(
        "--speaker_lines",
        default="36000:40000",
        help="Line range 'start:end' whose speeches form the speaker task (keep it outside the LM's pretraining).",
    )
    p.add_argument("--speaker_top_k", type=int, default=4, help="Number of most frequent speakers to classify.")
    p.add_argument("--random_init", action="store_true", help="Only train the head on an untrained backbone.")
    p.add_argument(
        "--compare_random_init",
        action="store_true",
        help="Also train the same head, same settings, on an untrained backbone of the same shape.",
    )
    p.add_argument(
        "--freeze_backbone", action="store_true", help="Train only the head (a linear probe of the backbone)."
    )
    p.add_argument("--max_length", type=int, default=256, help="Truncate texts to this many tokens.")
    p.add_argument("--num_train_epochs", type=float, default=10, help="Training epochs.")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate (linear decay).")
    p.add_argument("--warmup_ratio", type=float, default=0.1, help="Share of the steps spent warming up.")
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay.")
    p.add_argument("--batch_size", type=int, default=16, help="Training and evaluation batch size.")
    p.add_argument("--classifier_dropout", type=float, default=0.1, help="Dropout before the classification layer.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the split, the head's initialisation and training.")
    p.add_argument("--smoke", action="store_true", help="A tiny random model on a tiny speaker task (seconds).")
    args = p.parse_args(argv)
    if args.smoke:
        args.speaker_top_k, args.speaker_lines = 3, "38000:40000"
        args.num_train_epochs, args.max_length, args.batch_size = 1, 32, 8
        args.compare_random_init = args.model_name_or_path is not None
    elif args.model_name_or_path is None:
        p.error("--model_name_or_path is required (except with --smoke)")
    if args.label_files:
        if args.train_file or args.dataset_name:
            p.error("--label_files excludes --train_file and --dataset_name")
        if any("=" not in spec for spec in args.label_files):
            p.error(f"--label_files takes LABEL=PATH items, got {args.label_files}")
    elif args.fold is not None:
        p.error("--fold needs --label_files")
    if args.random_init and args.compare_random_init:
        p.error("--random_init and --compare_random_init exclude each other")
    return args


def load_tokenizer(args):
    name = args.tokenizer_name_or_path
    if name is None:
        model_dir = Path(args.model_name_or_path or "")
        has_own = args.model_name_or_path and (model_dir / "tokenizer_config.json").is_file()
        name = str(model_dir) if has_own else str(REPO_ROOT / "tokenizer")
    return AutoTokenizer.from_pretrained(name)


def load_data(args):
    if args.label_files:
        files = dict(spec.split("=", 1) for spec in args.label_files)
        data = label_files_dataset(
            files, fold=args.fold, num_folds=args.num_folds, held_out_fraction=args.held_out_fraction, seed=args.seed
        )
    elif args.train_file or args.dataset_name:
        data = load_classification_dataset(
            train_file=args.train_file,
            validation_file=args.validation_file,
            test_file=args.test_file,
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            text_column=args.text_column,
            label_column=args.label_column,
            held_out_fraction=args.held_out_fraction,
            seed=args.seed,
        )
    else:
        start, end = parse_line_range(args.speaker_lines)
        data = shakespeare_speakers(
            args.speaker_file, top_k=args.speaker_top_k, line_range=(start, None if end == -1 else end), seed=args.seed
        )
    label2id, id2label = label_maps(data)
    return encode_labels(data, label2id), label2id, id2label


def build_model(args, tokenizer, label2id, id2label, random_init: bool):
    labels = dict(
        num_labels=len(label2id),
        id2label=id2label,
        label2id=label2id,
        problem_type="single_label_classification",
        classifier_dropout=args.classifier_dropout,
    )
    set_seed(args.seed)
    if args.model_name_or_path is None:  # --smoke without a model: a tiny random one
        config = LSTMLMConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, **labels)
        return LSTMLMForSequenceClassification(config)
    if random_init:
        config = AutoConfig.from_pretrained(args.model_name_or_path, **labels)
        return LSTMLMForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, **labels)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")

    tokenizer = load_tokenizer(args)
    data, label2id, id2label = load_data(args)
    print(
        f"{len(label2id)} labels; "
        + ", ".join(f"{split} {len(part)}" for split, part in data.items())
        + f" examples; labels: {', '.join(id2label.values())}"
    )
    pretrained = args.model_name_or_path is not None and not args.random_init
    runs = {"pretrained": False} if pretrained else {"random_init": True}
    if args.compare_random_init:
        runs["random_init"] = True

    results = {}
    for name, random_init in runs.items():
        model = build_model(args, tokenizer, label2id, id2label, random_init)
        training_args = TrainingArguments(
            output_dir=str(output_dir / name),
            num_train_epochs=args.num_train_epochs,
            max_steps=max_steps_cap(),  # -1 unless $LSTMLM_MAX_STEPS caps it
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup_ratio,  # a float < 1 is a share of the steps
            weight_decay=args.weight_decay,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            eval_strategy="epoch" if not args.smoke else "no",
            logging_strategy="epoch",
            save_strategy="no",
            report_to=[],
            seed=args.seed,
            data_seed=args.seed,
            use_cpu=not torch.cuda.is_available(),
        )
        outcome = run_classification(
            model, tokenizer, data, training_args, max_length=args.max_length, freeze_backbone=args.freeze_backbone
        )
        model.save_pretrained(output_dir / name)
        tokenizer.save_pretrained(output_dir / name)
        results[name] = outcome
    results["majority"] = results[next(iter(runs))].pop("majority")
    for name in runs:
        results[name].pop("majority", None)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{'model':<14} {'val acc':>8} {'val F1':>8} {'test acc':>9} {'test F1':>8}")
    rows = [("majority", results["majority"])] + [(name, results[name]) for name in runs]
    for name, r in rows:
        v, t = r["validation"], r["test"]
        print(f"{name:<14} {v['accuracy']:8.3f} {v['macro_f1']:8.3f} {t['accuracy']:9.3f} {t['macro_f1']:8.3f}")
    print(f"\nSaved to {output_dir} (results.json, args.json, {', '.join(runs)}/)")


if __name__ == "__main__":
    main()
