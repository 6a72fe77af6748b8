"""Sentence classification benchmarks, 10-fold cross-validation: MR (sentence polarity) and SUBJ (subjectivity).

    python benchmarks/bench_classification.py --dataset mr --folds 0,1,2,3,4,5,6,7,8,9 --minutes 20 \
        --pretrain_minutes 120 --unlabeled_files ../shared/data/movie_reviews/reviews.jsonl --output_dir runs/cls-mr
    python benchmarks/bench_classification.py --dataset subj --minutes 20 --output_dir runs/cls-subj
    python benchmarks/bench_classification.py --smoke --output_dir /tmp/cls-smoke   # tiny models, seconds

Fold k = the lines whose 0-based index within their label file is congruent to k mod 10 (the bundled
`data/sentence_polarity/rt-polarity.{neg,pos}` and `data/subjectivity/{plot,quote}.tok.gt9.5000`); the other nine
folds are the training set. Systems, in one run:

- `majority`, `tfidf_lr` (TF-IDF word 1-2 grams + scikit-learn logistic regression, C=1) and `nbsvm` (NBSVM-bi, Wang &
  Manning 2012: binarized uni+bigrams scaled by the naive-Bayes log-count ratio, liblinear squared-hinge SVM C=1,
  interpolation beta=0.25): `modeling_lstmlm.baselines`.
- `lstm` and `gpt2`, ULMFiT's three stages (`modeling_lstmlm.ulmfit`), the same for both, run side by side in two
  processes with `--threads` torch threads each:
  1. a language model on general English (`--general_files`, default the bundled WikiText-2 valid + inaugural
     addresses), `--pretrain_minutes` of training, once, shared by every fold (kept in `output_dir/<system>/general`
     and reused by a later run with the same output_dir);
  2. per fold, that LM fine-tuned for `--minutes` on the fold's in-domain unlabeled text: the training folds'
     sentences plus `--unlabeled_files` (for MR the full movie reviews of Pang & Lee's polarity v2.0); every document
     that contains a test-fold sentence is dropped first, and the counts are reported;
  3. the classifier from that LM folder through `AutoModelForSequenceClassification` (the LSTM with concat pooling:
     last, max, mean; GPT-2 with its stock last-token head), trained `--cls_epochs` epochs with the `Trainer`:
     discriminative learning rates (/2.6 per layer group), a slanted-triangular schedule and gradual unfreezing (all
     groups unfrozen after `--unfreeze_epochs`).
  The LSTM is `--lstm_hidden_size` / `--lstm_embedding_size` / `--lstm_layers` (the recipe's 512/256/2 and its
  dropouts); GPT-2 has `--gpt2_n_embd` and the number of blocks that brings it closest to the LSTM's parameter count.
  Both use the project's tokenizer (`tokenizer/`), the same text, the same minutes and the same epochs.

Writes `output_dir/results.json`: per-fold test accuracy under `lstm`, `gpt2`, `nbsvm`, `tfidf_lr`, `majority`
(fold -> accuracy), their means under `mean`, and every stage's steps and seconds, the contamination counts and the
CPU time under `details`; prints the table.
"""

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

DATASETS = {
    "mr": {"neg": "sentence_polarity/rt-polarity.neg", "pos": "sentence_polarity/rt-polarity.pos"},
    "subj": {"objective": "subjectivity/plot.tok.gt9.5000", "subjective": "subjectivity/quote.tok.gt9.5000"},
}
SYSTEMS = ("lstm", "gpt2", "nbsvm", "tfidf_lr", "majority")
NEURAL = ("lstm", "gpt2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mr")
    p.add_argument("--data_dir", type=Path, default=REPO_ROOT / "data", help="Folder holding the dataset folders.")
    p.add_argument("--folds", default="0,1,2,3,4,5,6,7,8,9", help="Comma-separated folds to run (0-9).")
    p.add_argument("--minutes", type=float, default=20.0, help="Per fold and system: in-domain LM fine-tuning minutes.")
    p.add_argument("--pretrain_minutes", type=float, default=60.0, help="General-English LM training minutes (once).")
    p.add_argument("--general_files", nargs="*", default=None, help="General-English text files (.txt).")
    p.add_argument(
        "--pretrained_dir",
        type=Path,
        default=None,
        help="Reuse the general-English LMs of an earlier run (its output_dir, holding <system>/general).",
    )
    p.add_argument("--unlabeled_files", nargs="*", default=[], help="In-domain unlabeled text: .txt or .jsonl (text).")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="Comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--cls_epochs", type=float, default=3.0, help="Classifier training epochs.")
    p.add_argument("--unfreeze_epochs", type=float, default=1.0, help="Epochs until every layer group is unfrozen.")
    p.add_argument("--max_length", type=int, default=80, help="Classifier input length in tokens.")
    p.add_argument("--lstm_hidden_size", type=int, default=512)
    p.add_argument("--lstm_embedding_size", type=int, default=256)
    p.add_argument("--lstm_layers", type=int, default=2)
    p.add_argument("--lstm_lr", type=float, default=1e-2, help="LSTM pretraining rate (fine-tuning: half).")
    p.add_argument("--lstm_cls_lr", type=float, default=4e-3, help="LSTM classifier rate of the top layer group.")
    p.add_argument("--gpt2_n_embd", type=int, default=256)
    p.add_argument("--gpt2_n_head", type=int, default=4)
    p.add_argument("--gpt2_lr", type=float, default=2e-3, help="GPT-2 pretraining rate (fine-tuning: half).")
    p.add_argument("--gpt2_cls_lr", type=float, default=1e-3, help="GPT-2 classifier rate of the top layer group.")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each neural system's process.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", type=Path, default=REPO_ROOT / "runs" / "bench_classification")
    p.add_argument("--smoke", action="store_true", help="Tiny models, 40 lines per label, a few steps per stage.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one neural system, a JSON spec
    args = p.parse_args(argv)
    args.fold_list = [int(f) for f in args.folds.split(",") if f.strip()]
    if not args.fold_list or any(not 0 <= f < 10 for f in args.fold_list):
        p.error(f"--folds must list folds in 0..9, got {args.folds!r}")
    args.system_list = [s for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.system_list if s not in SYSTEMS]
    if unknown:
        p.error(f"Unknown systems {unknown}; choose from {SYSTEMS}")
    if args.smoke:
        args.fold_list = args.fold_list[:1]
        args.lstm_hidden_size, args.lstm_embedding_size, args.lstm_layers = 32, 16, 2
        args.gpt2_n_embd, args.gpt2_n_head = 16, 2
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_examples(args) -> dict[str, list[str]]:
    from modeling_lstmlm.baselines import read_label_files

    examples = read_label_files({label: args.data_dir / path for label, path in DATASETS[args.dataset].items()})
    if args.smoke:
        examples = {label: lines[:40] for label, lines in examples.items()}
    return examples


def general_documents(files, smoke: bool) -> list[str]:
    if files is None:
        files = [REPO_ROOT / "data/wikitext-2/valid.txt", *sorted((REPO_ROOT / "data/inaugural").glob("*.txt"))]
    documents = []
    for path in map(Path, files):
        text = path.read_text(encoding="utf-8", errors="replace")
        documents.extend(line for line in text.split("\n") if line.strip())
    return documents[:200] if smoke else documents


def unlabeled_documents(files) -> list[str]:
    documents = []
    for path in map(Path, files):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                documents.extend(json.loads(line)["text"] for line in handle if line.strip())
        else:
            documents.extend(p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip())
    return documents


# ---------------------------------------------------------------------------------------------------------------------
# One neural system, all folds (runs in its own process)


def build_lm(spec: dict, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

    set_seed(spec["seed"])
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    lstm_config = LSTMLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["lstm_hidden_size"],
        embedding_size=spec["lstm_embedding_size"],
        num_hidden_layers=spec["lstm_layers"],
        embedding_dropout=0.2,
        hidden_dropout=0.2,
        output_dropout=0.4,
        weight_dropout=0.3,
        embedding_row_dropout=0.1,
        variational_dropout=True,
        classifier_pooling="concat",
        classifier_dropout=0.4,
        **ids,
    )
    lstm = LSTMLMForCausalLM(lstm_config)
    if spec["system"] == "lstm":
        return lstm
    target, best = lstm.num_parameters(), None
    for n_layer in range(1, 25):  # the number of blocks that comes closest to the LSTM's parameter count
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=256,
            n_embd=spec["gpt2_n_embd"],
            n_layer=n_layer,
            n_head=spec["gpt2_n_head"],
            **ids,
        )
        model = GPT2LMHeadModel(config)
        if best is None or abs(model.num_parameters() - target) < abs(best.num_parameters() - target):
            best = model
    return best


def run_system(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    import modeling_lstmlm  # noqa: F401  (registers the LSTM with the Auto classes)
    from modeling_lstmlm.baselines import cv_fold
    from modeling_lstmlm.data import tokenize_documents
    from modeling_lstmlm.ulmfit import remove_contaminated, train_classifier, train_language_model

    system, out = spec["system"], Path(spec["output_dir"])
    lstm = system == "lstm"
    smoke = spec["smoke"]
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    examples = {label: lines for label, lines in spec["examples"].items()}
    label_ids = {label: i for i, label in enumerate(examples)}
    lm = dict(
        stateful=lstm,
        batch_size=20 if lstm else 32,
        block_size=35 if lstm else 128,
        max_grad_norm=0.25 if lstm else 1.0,
        weight_decay=0.0 if lstm else 0.1,
    )
    if smoke:
        lm.update(block_size=8, batch_size=4)
    lr = spec["lstm_lr"] if lstm else spec["gpt2_lr"]
    details = {"folds": {}}

    general_dir = Path(spec["pretrained_dir"] or out) / system / "general"
    if (general_dir / "config.json").is_file() and not smoke:
        details["general"] = json.loads((general_dir / "stage.json").read_text())
        all_sentences = [s for lines in examples.values() for s in lines]
        trained_on = (general_dir / "pretraining_documents.txt").read_text(encoding="utf-8").split("\n")
        _, report = remove_contaminated(trained_on, all_sentences)
        if report["test_sentences_found"]:
            raise ValueError(f"{general_dir} was trained on text holding sentences of this dataset: {report}")
        details["general"]["contamination_reused"] = report
    elif spec["pretrained_dir"]:
        raise FileNotFoundError(f"No general LM at {general_dir}")
    else:
        model = build_lm(spec, tokenizer)
        all_sentences = [s for lines in examples.values() for s in lines]
        documents, report = remove_contaminated(spec["general_documents"], all_sentences)
        general_dir.mkdir(parents=True, exist_ok=True)
        # the documents the LM trains on, one a line, so that a later run reusing it can check them
        text = "\n".join(" ".join(doc.split()) for doc in documents)
        (general_dir / "pretraining_documents.txt").write_text(text, encoding="utf-8")
        ids = tokenize_documents(documents, tokenizer)
        stage = train_language_model(
            model,
            ids,
            general_dir,
            minutes=None if smoke else spec["pretrain_minutes"],
            max_steps=3 if smoke else -1,
            learning_rate=lr,
            seed=spec["seed"],
            **lm,
        )
        stage.update(contamination=report, num_parameters=model.num_parameters(), train_tokens_available=len(ids))
        tokenizer.save_pretrained(general_dir)
        (general_dir / "stage.json").write_text(json.dumps(stage, indent=2))
        details["general"] = stage

    for fold in spec["folds"]:
        train, test = cv_fold(examples, fold)
        train = [(text, label_ids[label]) for text, label in train]
        test = [(text, label_ids[label]) for text, label in test]
        documents = [text for text, _ in train] + list(spec["unlabeled_documents"])
        random.Random(spec["seed"]).shuffle(documents)
        documents, report = remove_contaminated(documents, [text for text, _ in test])
        fold_dir = out / system / f"fold{fold}"
        set_seed(spec["seed"])
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(general_dir)
        ids = tokenize_documents(documents, tokenizer)
        lm_stage = train_language_model(
            model,
            ids,
            fold_dir / "lm",
            minutes=None if smoke else spec["minutes"],
            max_steps=3 if smoke else -1,
            learning_rate=lr / 2,
            warmup_steps=0 if smoke else 20,
            seed=spec["seed"],
            **lm,
        )
        tokenizer.save_pretrained(fold_dir / "lm")
        set_seed(spec["seed"])
        extra = {"classifier_pooling": "concat"} if lstm else {"pad_token_id": tokenizer.pad_token_id}
        classifier = AutoModelForSequenceClassification.from_pretrained(fold_dir / "lm", num_labels=2, **extra)
        cls_stage = train_classifier(
            classifier,
            tokenizer,
            train,
            test,
            fold_dir / "classifier",
            learning_rate=spec["lstm_cls_lr"] if lstm else spec["gpt2_cls_lr"],
            num_epochs=spec["cls_epochs"],
            unfreeze_epochs=spec["unfreeze_epochs"],
            max_length=spec["max_length"],
            seed=spec["seed"],
            max_steps=4 if smoke else None,
        )
        details["folds"][str(fold)] = {"contamination": report, "lm_finetune": lm_stage, "classifier": cls_stage}
        (out / system / "details.json").write_text(json.dumps(details, indent=2))
        print(f"{system} fold {fold}: accuracy {cls_stage['accuracy']:.4f}", flush=True)
        del model, classifier
        torch.manual_seed(spec["seed"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    details["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    (out / system / "details.json").write_text(json.dumps(details, indent=2))
    return details


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch
    from transformers.utils import logging

    torch.set_num_threads(spec["threads"])
    logging.set_verbosity_error()
    run_system(spec)


def launch(spec: dict, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    log = open(out / "log.txt", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(spec_path)], env=env, stdout=log, stderr=subprocess.STDOUT
    )


# ---------------------------------------------------------------------------------------------------------------------
# The driver


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    from modeling_lstmlm.baselines import cv_fold, majority_accuracy, nbsvm_accuracy, tfidf_lr_accuracy

    start = time.monotonic()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    examples = load_examples(args)
    labels = list(examples)
    print(f"{args.dataset}: " + ", ".join(f"{len(lines)} {label}" for label, lines in examples.items()))

    processes = {}
    neural = [s for s in args.system_list if s in NEURAL]
    if neural:
        spec = {
            key: value
            for key, value in vars(args).items()
            if key not in ("data_dir", "output_dir", "general_files", "unlabeled_files", "worker", "fold_list")
        }
        spec.update(
            pretrained_dir=str(args.pretrained_dir) if args.pretrained_dir else None,
            folds=args.fold_list,
            output_dir=str(args.output_dir),
            examples=examples,
            general_documents=general_documents(args.general_files, args.smoke),
            unlabeled_documents=unlabeled_documents(args.unlabeled_files),
        )
        for system in neural:
            processes[system] = launch({**spec, "system": system}, args.output_dir / system)

    results = {system: {} for system in args.system_list}
    baseline_seconds = time.monotonic()
    for fold in args.fold_list:
        train, test = cv_fold(examples, fold)
        train = [(text, labels.index(label)) for text, label in train]
        test = [(text, labels.index(label)) for text, label in test]
        if "majority" in results:
            results["majority"][str(fold)] = majority_accuracy([y for _, y in train], [y for _, y in test])
        if "nbsvm" in results:
            results["nbsvm"][str(fold)] = nbsvm_accuracy(train, test)
        if "tfidf_lr" in results:
            results["tfidf_lr"][str(fold)] = tfidf_lr_accuracy(train, test)
    baseline_seconds = time.monotonic() - baseline_seconds
    own = resource.getrusage(resource.RUSAGE_SELF)
    details = {"baselines": {"seconds": baseline_seconds, "cpu_seconds": own.ru_utime + own.ru_stime}}

    failed = []
    for system, process in processes.items():
        if process.wait() != 0:
            failed.append(system)
            continue
        system_details = json.loads((args.output_dir / system / "details.json").read_text())
        details[system] = system_details
        for fold, fold_details in system_details["folds"].items():
            results[system][fold] = fold_details["classifier"]["accuracy"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    details["cpu_seconds_all"] = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    details["wall_seconds"] = time.monotonic() - start

    means = {s: sum(r.values()) / len(r) for s, r in results.items() if r}
    output = {
        **results,
        "mean": means,
        "dataset": args.dataset,
        "folds": args.fold_list,
        "details": details,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "general_files"},
    }
    (args.output_dir / "results.json").write_text(json.dumps(output, indent=2) + "\n")

    print(f"\n{args.dataset}, folds {','.join(map(str, args.fold_list))}: test accuracy (%)")
    print(f"{'system':<10} " + " ".join(f"{f:>6}" for f in args.fold_list) + f" {'mean':>7}")
    for system in args.system_list:
        row = results[system]
        cells = " ".join(f"{100 * row[str(f)]:6.2f}" if str(f) in row else f"{'-':>6}" for f in args.fold_list)
        mean = f"{100 * means[system]:7.2f}" if system in means else f"{'-':>7}"
        print(f"{system:<10} {cells} {mean}")
    print(
        f"\nCPU time {details['cpu_seconds_all'] / 60:.1f} min, wall {details['wall_seconds'] / 60:.1f} min; "
        f"results in {args.output_dir / 'results.json'}"
    )
    if failed:
        logs = ", ".join(str(args.output_dir / s / "log.txt") for s in failed)
        raise SystemExit(f"{', '.join(failed)} failed; see {logs}")


if __name__ == "__main__":
    main()
