"""Chat with a trained LSTM language model, streaming each reply; the model keeps the conversation's state.

    python scripts/chat.py --model runs/chat-model                  # interactive
    printf 'Hello\\nWho are you?\\n' | python scripts/chat.py --model runs/chat-model   # turns from a pipe
    python scripts/chat.py --smoke                                  # tiny random model, the committed tokenizer

Each turn feeds only the new user turn (rendered with the tokenizer's chat template) on top of the kept state:
the cost of a turn does not grow with the conversation. One user turn per input line; `/reset` starts over,
`/quit` (or end of input) stops. The transcript and the resolved arguments are written to --output_dir.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from lstmlm.commands._common import HelpFormatter, check_model_path
from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM
from modeling_lstmlm.chat import ChatSession
from modeling_lstmlm.packaged import tokenizer_dir as packaged_tokenizer

SMOKE_TURNS = ["Hello!", "What can you tell me about the sea?"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="saved model folder (required unless --smoke)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer folder (default: the model folder if it holds a tokenizer, else the committed tokenizer/)",
    )
    parser.add_argument("--system", default=None, help="system message that opens the conversation")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="longest reply, in tokens")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=0.95, help="nucleus sampling threshold")
    parser.add_argument("--repetition_penalty", type=float, default=1.1, help="penalty on already-seen tokens")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=Path("runs") / "chat_transcripts",
        help="where transcript.json and args.json go",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: a tiny random model with the committed tokenizer, greedy 16-token replies; the turns come "
        f"from stdin when it is piped, else {SMOKE_TURNS}",
    )
    args = parser.parse_args(argv)
    check_model_path(args.model, "--model")
    check_model_path(args.tokenizer, "--tokenizer")
    if args.model is None and not args.smoke:
        parser.error("--model is required (or pass --smoke)")
    if args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    return args


def load(args: argparse.Namespace) -> tuple[LSTMLMForCausalLM, object]:
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        has_own = args.model is not None and (args.model / "tokenizer.json").is_file() and not args.smoke
        tokenizer_dir = args.model if has_own else packaged_tokenizer()
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise SystemExit(f"no tokenizer.json in {tokenizer_dir}; pass --tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if args.smoke:
        torch.manual_seed(args.seed)
        config = LSTMLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2)
        model = LSTMLMForCausalLM(config)
    else:
        if not args.model.is_dir():
            raise SystemExit(f"--model {args.model} is not a folder")
        model = AutoModelForCausalLM.from_pretrained(args.model)
    return model.to(args.device).eval(), tokenizer


def user_turns(args: argparse.Namespace):
    """One turn per line: from the terminal with a prompt, or from a pipe."""
    interactive = sys.stdin.isatty()
    if args.smoke and interactive:
        yield from SMOKE_TURNS
        return
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and line == "":
            return
        line = line.strip()
        if line:
            yield line


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:
        args.max_new_tokens, args.greedy = 16, True
    args.output_dir.mkdir(parents=True, exist_ok=True)
    resolved = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    (args.output_dir / "args.json").write_text(json.dumps(resolved, indent=2) + "\n")

    model, tokenizer = load(args)
    sampling = {} if args.greedy else dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    session = ChatSession(
        model,
        tokenizer,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        repetition_penalty=args.repetition_penalty,
        **sampling,
    )
    torch.manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    turns = []

    def save() -> None:
        transcript = {"messages": session.messages, "turns": turns, "token_ids": session.token_ids}
        (args.output_dir / "transcript.json").write_text(json.dumps(transcript, indent=2, ensure_ascii=False) + "\n")

    for text in user_turns(args):
        if text == "/quit":
            break
        if text == "/reset":
            session.reset()
            print("(conversation reset)")
            continue
        if not sys.stdin.isatty():
            print(f"you> {text}")
        print("bot> ", end="", flush=True)
        start = time.perf_counter()
        history_before = len(session.token_ids)
        session.send(text, streamer=streamer)
        turns.append(
            {
                "added_tokens": len(session.token_ids) - history_before,  # the user turn and the reply
                "history_tokens": len(session.token_ids),
                "seconds": round(time.perf_counter() - start, 4),
            }
        )
        save()
    save()
    print(f"(transcript: {args.output_dir / 'transcript.json'})")


if __name__ == "__main__":
    main()
