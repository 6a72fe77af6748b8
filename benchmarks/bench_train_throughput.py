"""Training throughput: a Trainer step on LSTMLM against a hand-written PyTorch loop on a bare Embedding-LSTM-Linear.

    python benchmarks/bench_train_throughput.py                       # H=512, L=2, V=8192, batch 20 x BPTT 35
    python benchmarks/bench_train_throughput.py --steps 10 --repeats 1  # a quick look

Both sides train the same shape on the same token stream, the same way: stateful truncated BPTT (the state carried
between batches, detached), the same dropout, tied weights, SGD, gradient clipping. The Trainer side is the project's
`LMTrainer` (the stock `transformers.Trainer` plus the carried state) on `LSTMLMForCausalLM`, fed by `BPTTStreams`
and `LMCollator` through the Trainer's own DataLoader; the bare side is `nn.Embedding -> nn.LSTM(num_layers=L) ->
nn.Linear` and a plain `for` loop. Tokens per second are timed over the steps after `--warmup`, each side in turn,
`--repeats` times (A B A B ...), and the table reports the median; the ratio is Trainer / bare (goal: >= 0.9).
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_lstmlm") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from _generate_common import cpu_name  # noqa: E402
from torch import nn  # noqa: E402
from transformers import TrainerCallback, TrainingArguments  # noqa: E402
from transformers.utils import logging  # noqa: E402

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM  # noqa: E402
from modeling_lstmlm.data import BPTTStreams, LMCollator  # noqa: E402
from modeling_lstmlm.training import LMTrainer  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_size", type=int, default=8192, help="Vocabulary size")
    parser.add_argument("--hidden_size", type=int, default=512, help="LSTM hidden size (= embedding size)")
    parser.add_argument("--num_layers", type=int, default=2, help="LSTM layers")
    parser.add_argument("--batch_size", type=int, default=20, help="Streams per batch")
    parser.add_argument("--bptt", type=int, default=35, help="Tokens per stream per batch")
    parser.add_argument("--dropout", type=float, default=0.2, help="Dropout (embedding, between layers, output)")
    parser.add_argument("--steps", type=int, default=40, help="Timed steps per measurement (after the warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps at the start of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="Measurements per side, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--output_file", type=Path, default=None, help="Also write the results as JSON here")
    return parser.parse_args(argv)


def machine_facts(threads: int) -> dict:
    return {
        "cpu": cpu_name(),
        "logical cores": os.cpu_count(),
        "torch threads": threads,
        "load average (1 min)": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


class BareLSTMLM(nn.Module):
    """pytorch/examples word_language_model's RNNModel, LSTM, tied."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, hidden_size)
        self.rnn = nn.LSTM(hidden_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.decoder.weight = self.encoder.weight

    def forward(self, input_ids, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input_ids)), hidden)
        return self.decoder(self.drop(output)), hidden


def stream_for(args) -> torch.LongTensor:
    needed = args.batch_size * args.bptt * (args.warmup + args.steps + 2) + 1
    return torch.randint(0, args.vocab_size, (needed,), generator=torch.Generator().manual_seed(0))


def time_bare(args, stream) -> float:
    torch.manual_seed(0)
    model = BareLSTMLM(args.vocab_size, args.hidden_size, args.num_layers, args.dropout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    streams = BPTTStreams(stream, args.batch_size, args.bptt)
    data = torch.stack([streams.stream(s) for s in range(args.batch_size)])  # (batch, tokens)
    hidden = None
    total = args.warmup + args.steps
    for step in range(total):
        if step == args.warmup:
            start = time.perf_counter()
        chunk = data[:, step * args.bptt : (step + 1) * args.bptt + 1]
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)  # truncated BPTT: no backward into the previous batch
        logits, hidden = model(inputs, hidden)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab_size), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
    elapsed = time.perf_counter() - start
    return args.steps * args.batch_size * args.bptt / elapsed


class StepClock(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def time_trainer(args, stream, output_dir: Path) -> float:
    torch.manual_seed(0)
    config = LSTMLMConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        embedding_dropout=args.dropout,
        hidden_dropout=args.dropout,
        output_dropout=args.dropout,
    )
    model = LSTMLMForCausalLM(config)
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.25,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    clock = StepClock(args.warmup)
    trainer = LMTrainer(
        model=model,
        args=training_args,
        train_dataset=BPTTStreams(stream, args.batch_size, args.bptt),
        data_collator=LMCollator(),
        stateful_bptt=True,
        callbacks=[clock],
    )
    trainer.train()
    return args.steps * args.batch_size * args.bptt / (clock.end - clock.start)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.set_verbosity_error()
    stream = stream_for(args)
    facts = machine_facts(args.threads)
    bare, trainer = [], []
    output_dir = REPO_ROOT / "runs" / "bench_train_throughput"
    for _ in range(args.repeats):
        bare.append(time_bare(args, stream))
        trainer.append(time_trainer(args, stream, output_dir))
    result = {
        "shape": f"V={args.vocab_size} H={args.hidden_size} L={args.num_layers} batch={args.batch_size} "
        f"bptt={args.bptt} dropout={args.dropout}",
        "bare_tokens_per_s": bare,
        "trainer_tokens_per_s": trainer,
        "bare_median": statistics.median(bare),
        "trainer_median": statistics.median(trainer),
    }
    result["ratio"] = result["trainer_median"] / result["bare_median"]
    print("Machine: " + ", ".join(f"{k}: {v}" for k, v in facts.items()))
    print(f"Shape: {result['shape']}; {args.steps} timed steps after {args.warmup} warmup, {args.repeats} repeats")
    print()
    print(f"| {'loop':<46} | {'tokens/s (median)':>17} | {'all runs':<28} |")
    print(f"|{'-' * 48}|{'-' * 19}|{'-' * 30}|")
    runs = ", ".join(f"{v:,.0f}" for v in bare)
    print(f"| {'bare PyTorch loop (Embedding-nn.LSTM-Linear)':<46} | {result['bare_median']:>17,.0f} | {runs:<28} |")
    runs = ", ".join(f"{v:,.0f}" for v in trainer)
    name = "Trainer step (LMTrainer, LSTMLMForCausalLM)"
    print(f"| {name:<46} | {result['trainer_median']:>17,.0f} | {runs:<28} |")
    print(f"\nTrainer / bare = {result['ratio']:.3f} (goal >= 0.9)")
    if args.output_file is not None:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps({"machine": facts, "arguments": vars(args), **result}, indent=2,
                                               default=str) + "\n")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
