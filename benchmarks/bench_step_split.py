"""Where a decoding token's time goes: the packed kernels, the rest of the model's forward, and `generate()`'s loop.

    taskset -c 0 python benchmarks/bench_step_split.py                 # batch 1 and 8, H=512 L=2 V=8192
    taskset -c 0 python benchmarks/bench_step_split.py --batch_sizes 1 --rounds 10
    taskset -c 0 python benchmarks/bench_step_split.py --int8      # the int8 model (`quantization.quantize_model`)

`generate()` (greedy, no `min_new_tokens`) and the `model-modules loop` of `bench_generate_vs_loop.py` (the model's
embedding, `LSTMLMLayer`s and output layer called by hand) run interleaved on the same random model in this process,
with timers around every call of a decoding kernel (`kernels_lstmlm`'s onnxruntime / oneDNN / ATen kernel objects,
and `torch.lstm_cell` / `F.linear`, which the plain ATen path calls)
and around `LSTMLMForCausalLM.forward`. Per token: `kernels` (the matmuls and gate math inside the kernel calls),
`forward - kernels` (the model's own per-token work around them: module calls, state bookkeeping, outputs) and
`outside forward` (`generate()`'s loop: logits copy, token choice, stopping criteria, ids); for the hand loop,
everything that is not a kernel. The three fastest rounds of each are printed (a shared machine is noisy; the split
within one round is what to read). Timers add about a microsecond per call. With `--int8` the model is quantized first
and `kernels` are its int8 products (`quantized::linear_dynamic`, five a token: each layer's input and recurrent
product, the output layer); the int8 layers' gate math counts in `forward - kernels`.
"""

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate_common import (  # noqa: E402
    add_model_arguments,
    build_lstm,
    loop_modules,
    machine_facts,
    print_facts,
    run_generate_unforced,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    parser.add_argument("--new_tokens", type=int, default=256, help="new tokens per row")
    add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timed runs of each method")
    parser.add_argument("--int8", action="store_true", help="quantize the model to int8 first (quantize_model)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from modeling_lstmlm import kernels_lstmlm, quantization_lstmlm
    from modeling_lstmlm.modeling_lstmlm import LSTMLMForCausalLM
    from modeling_lstmlm.quantization import quantize_model

    spent = {"kernels": 0.0, "forward": 0.0}

    def timed(function, bucket):
        # functools.wraps keeps the signature visible: generate() reads forward's parameters (logits_to_keep).
        @functools.wraps(function)
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[bucket] += time.perf_counter() - start

        return wrapper

    for kernels in (kernels_lstmlm._STEP_KERNELS, kernels_lstmlm._LINEAR_KERNELS):
        for cls in kernels.values():
            cls.__call__ = timed(cls.__call__, "kernels")
    # The plain ATen path (one-row calls where "auto" measured ATen faster, and any module that chose ATen) calls these
    # two directly: time them as kernels too.
    torch.lstm_cell = timed(torch.lstm_cell, "kernels")
    torch.nn.functional.linear = timed(torch.nn.functional.linear, "kernels")
    if quantization_lstmlm._LINEAR_DYNAMIC is not None:  # the int8 layers' products (read as a global at each call)
        quantization_lstmlm._LINEAR_DYNAMIC = timed(quantization_lstmlm._LINEAR_DYNAMIC, "kernels")
    LSTMLMForCausalLM.forward = timed(LSTMLMForCausalLM.forward, "forward")

    lstm = {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "num_hidden_layers": args.num_layers}
    model = build_lstm({"lstm": lstm})  # eos_token_id=None: exactly N tokens
    if args.int8:
        model = quantize_model(model)

    print(
        f"LSTMLM H={args.hidden_size} L={args.num_layers} V={args.vocab_size}{', int8' if args.int8 else ''}, "
        f"{args.new_tokens} new tokens, 1 thread"
    )
    print("| batch | method | ms/token | kernels | forward - kernels | outside forward (generate's loop) |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(2, args.vocab_size, (batch, args.prompt_len), generator=generator)
        methods = {"generate": run_generate_unforced, "model-modules loop": loop_modules}
        rows = {name: [] for name in methods}
        with torch.inference_mode():
            outputs = {name: method(model, input_ids, args.new_tokens) for name, method in methods.items()}  # warm-up
            if not torch.equal(outputs["generate"], outputs["model-modules loop"]):
                raise RuntimeError("generate() and the hand loop produced different ids")
            for _ in range(args.rounds):
                for name, method in methods.items():
                    spent["kernels"] = spent["forward"] = 0.0
                    start = time.perf_counter()
                    method(model, input_ids, args.new_tokens)
                    total = time.perf_counter() - start
                    per = 1e3 / args.new_tokens
                    forward = spent["forward"] if name == "generate" else total
                    rows[name].append(
                        (
                            total * per,
                            spent["kernels"] * per,
                            (forward - spent["kernels"]) * per,
                            (total - forward) * per,
                        )
                    )
        for name, measured in rows.items():
            for total, kernels, rest, outside in sorted(measured)[:3]:
                outside_text = f"{outside:.3f}" if name == "generate" else "-"
                print(f"| {batch} | {name} | {total:.3f} | {kernels:.3f} | {rest:.3f} | {outside_text} |")
    print()
    print_facts(machine_facts(1))
    print("decode kernels:", {k: v[0] for k, v in kernels_lstmlm.decode_kernel_choices(model).items()})


if __name__ == "__main__":
    main()
