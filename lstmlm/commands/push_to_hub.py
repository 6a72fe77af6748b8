"""Publish a training run on the Hugging Face Hub: weights, config (+ auto_map), modeling code, tokenizer, generation
config and a README.md rendered from model_card.md, all in one commit.

    python scripts/push_to_hub.py runs/demo me/lstmlm-demo                     # creates the repo if needed
    python scripts/push_to_hub.py runs/demo me/lstmlm-demo --private --commit_message "Tiny Shakespeare, 2x512"
    python scripts/push_to_hub.py runs/demo me/lstmlm-demo --revision v2 --no_create  # repo must exist (branch made)
    python scripts/push_to_hub.py runs/demo me/lstmlm-demo --dry_run           # show files and README, send nothing
    python scripts/push_to_hub.py --smoke                                      # tiny run folder, dry run (CI)

The token comes from HF_TOKEN or `hf auth login` (or --token); HF_ENDPOINT points the client at another Hub. Anyone
then loads the model by repo id: `AutoModelForCausalLM.from_pretrained(REPO_ID)` after `import modeling_lstmlm`, or
with `trust_remote_code=True` (pin `revision=`) where the package is not installed.
"""

import argparse
import json
import tempfile
from pathlib import Path

from lstmlm.commands._common import HelpFormatter
from modeling_lstmlm.hub import (
    DEFAULT_LANGUAGE,
    DEFAULT_LICENSE,
    files_to_push,
    push_run,
    render_model_card,
)


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="The run folder (what scripts/train.py wrote, e.g. runs/demo).")
    parser.add_argument("repo_id", nargs="?", help="The Hub repo, `namespace/name` (or `name` for your own user).")
    parser.add_argument("--revision", default=None, help="Branch to commit to (default main); created if missing.")
    parser.add_argument(
        "--private",
        action="store_true",
        help="Create the repo private (default: the account's default visibility; no effect on an existing repo).",
    )
    parser.add_argument(
        "--commit_message", "--commit-message", default=None, help="The commit title (default: 'Upload RUN (lstmlm)')."
    )
    parser.add_argument(
        "--commit_description", "--commit-description", default=None, help="A longer commit description."
    )
    parser.add_argument(
        "--no_create",
        "--no-create",
        action="store_true",
        help="Do not create the repo or the branch: both must already exist.",
    )
    parser.add_argument("--token", default=None, help="A Hub token with write access (default: HF_TOKEN or login).")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="License id for the card metadata.")
    parser.add_argument(
        "--language", nargs="+", default=list(DEFAULT_LANGUAGE), help="Language codes for the card metadata."
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="Hub dataset id of the training text for the metadata (repeatable; default: from run_args.json).",
    )
    parser.add_argument("--tag", action="append", default=None, help="Extra tag for the metadata (repeatable).")
    parser.add_argument(
        "--base_model", "--base-model", default=None, help="Hub id of the model this run was fine-tuned from."
    )
    parser.add_argument(
        "--template", default=None, help="The model card template (Jinja2; default: the packaged model_card.md)."
    )
    parser.add_argument(
        "--dry_run", "--dry-run", action="store_true", help="Print the files and the README; send nothing."
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Use a tiny untrained run folder made in a temp dir; a dry run unless "
        "REPO_ID is given (then it is pushed there).",
    )
    return parser


def make_smoke_run(folder: Path) -> Path:
    """A tiny untrained model with the committed tokenizer, saved as a run folder (no run record)."""
    from modeling_lstmlm.smoke import save_tiny_model

    save_tiny_model(folder)  # the packaged tokenizer
    return folder


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = make_parser(prog)
    args = parser.parse_args(argv)
    if not args.smoke and (args.run_dir is None or args.repo_id is None):
        parser.error("RUN_DIR and REPO_ID are required (or --smoke)")
    if args.smoke and args.repo_id is None:  # `--smoke REPO_ID`: the one positional given is the repo
        args.repo_id, args.run_dir = args.run_dir, None
    dry_run = args.dry_run or (args.smoke and args.repo_id is None)
    shown = {**vars(args), "token": "***" if args.token else None, "dry_run": dry_run}
    print(json.dumps(shown, indent=2))

    card_options = dict(
        template=args.template,
        license=args.license,
        language=args.language,
        datasets=args.dataset,
        tags=args.tag,
        base_model=args.base_model,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_smoke_run(Path(tmp) / "smoke") if args.smoke else Path(args.run_dir)
        repo_id = args.repo_id or "your-name/lstmlm-smoke"
        try:
            if dry_run:
                files = files_to_push(run_dir)
                card = render_model_card(run_dir, repo_id, **card_options)
                print(f"\nWould push to {repo_id}: {', '.join([*files, 'README.md'])}\n\n--- README.md ---\n{card}")
                return
            commit = push_run(
                run_dir,
                repo_id,
                revision=args.revision,
                private=True if args.private else None,  # None: the account's default visibility
                commit_message=args.commit_message,
                token=args.token,
                create=not args.no_create,
                commit_description=args.commit_description,
                **card_options,
            )
        except (OSError, ValueError) as err:  # HfHubHTTPError is an OSError: every expected failure, no traceback
            raise SystemExit(f"{parser.prog}: error: {err}") from err
    print(f"\nPushed {run_dir} to {repo_id} in commit {commit.oid}\n{commit.commit_url}")


if __name__ == "__main__":
    main()
