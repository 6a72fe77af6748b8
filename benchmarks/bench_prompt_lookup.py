"""Does prompt lookup (transformers' draft-free speculative decoding) speed up an LSTM's greedy `generate()`?

    python benchmarks/bench_prompt_lookup.py --model runs/demo            # the README demo's model (train it first)
    python benchmarks/bench_prompt_lookup.py --model runs/demo --lookup 3,10 --new_tokens 128 --prompts 8

With `prompt_lookup_num_tokens=k`, transformers drafts up to k tokens by matching the last n-gram of the text so far
against earlier text (the prompt and what was generated), and the model verifies a draft in one forward; rejected
tokens are cropped off the cache (`LSTMLMCache.crop`, transformers 5.25+). An LSTM reads the draft tokens one at a
time through its layers (the state before each is kept for the rollback), but the output layer, the largest matrix
at a realistic vocabulary, runs once per draft instead of once per token, and transformers' per-token loop runs once
per accepted run of tokens.

Prompts: `--prompts` passages of `--prompt_tokens` tokens from the validation lines of tiny-shakespeare
(`data/tinyshakespeare/input.txt` lines 36000:38000, held out from the demo's training), one at a time (prompt
lookup runs at batch 1). Every method decodes exactly `--new_tokens` greedy tokens (no eos); the ids must equal plain
greedy's (checked, the run fails otherwise). Times: the methods interleaved, `--repeats` rounds, the fastest round
per method; one torch thread by default. Reports tokens/s, the speed-up over plain greedy and the tokens gained per
forward of the model (about 1 for plain greedy: the prompt's forward is not counted).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _generate_common import REPO_ROOT, machine_facts, print_facts, print_table  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder saved by scripts/train.py (model and tokenizer)")
    parser.add_argument("--lookup", default="3,10", help="comma-separated prompt_lookup_num_tokens values")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt_tokens", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text", default=str(REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "runs" / "benchmarks"))
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_lstmlm  # noqa: F401 - registers the model with the Auto classes

    torch.set_num_threads(args.threads)
    lookups = [int(k) for k in args.lookup.split(",") if k.strip()]
    if not lookups or min(lookups) < 1:
        raise ValueError(f"`--lookup` must list positive integers, got {args.lookup!r}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    lines = Path(args.text).read_text(encoding="utf-8").splitlines()[36000:38000]
    ids = tokenizer("\n".join(lines), return_tensors="pt").input_ids[0]
    stride = max(1, (len(ids) - args.prompt_tokens) // max(1, args.prompts))
    prompts = [ids[i * stride : i * stride + args.prompt_tokens][None] for i in range(args.prompts)]
    if any(p.shape[1] < args.prompt_tokens for p in prompts):
        raise ValueError(f"{args.text} lines 36000:38000 are too short for {args.prompts} prompts")

    forwards = []
    model.register_forward_pre_hook(lambda module, a: forwards.append(1))

    def run(method, prompt):
        kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=None)
        if method:
            kwargs["prompt_lookup_num_tokens"] = method
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)

    methods = [0, *lookups]  # 0: plain greedy
    names = {0: "greedy", **{k: f"prompt lookup, k={k}" for k in lookups}}
    expected = [run(0, p) for p in prompts]
    for k in lookups:  # warm-up, and the equality check
        for p, want in zip(prompts, expected, strict=True):
            got = run(k, p)
            if got.tolist() != want.tolist():
                raise AssertionError(f"prompt lookup k={k} gave other ids than plain greedy")
    varied = len(set(torch.cat([e[0, args.prompt_tokens :] for e in expected]).tolist()))
    best = dict.fromkeys(methods, float("inf"))
    calls = dict.fromkeys(methods, 0)
    with torch.no_grad():
        for _ in range(args.repeats):
            for method in methods:
                forwards.clear()
                start = time.perf_counter()
                for p in prompts:
                    run(method, p)
                best[method] = min(best[method], time.perf_counter() - start)
                calls[method] = len(forwards)
    total = args.new_tokens * len(prompts)
    rows, results = [], {}
    for method in methods:
        rate = total / best[method]
        per_forward = total / max(1, calls[method] - len(prompts))  # the prompt's own forward gains no token
        results[names[method]] = {"tokens_per_s": rate, "new_tokens_per_forward": per_forward}
        rows.append([names[method], f"{rate:.0f}", f"{best[0] / best[method]:.2f}x", f"{per_forward:.2f}", "yes"])
    print(
        f"\n{args.model}: {len(prompts)} prompts of {args.prompt_tokens} tokens, {args.new_tokens} new greedy tokens "
        f"each ({varied} distinct ids generated), batch 1, {args.threads} thread(s), fastest of {args.repeats}\n"
    )
    print_table(["method", "tokens/s", "vs greedy", "new tokens per forward", "same ids"], rows)
    facts = machine_facts(args.threads)
    print_facts(facts)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompt_lookup.json").write_text(json.dumps({"args": vars(args), "results": results, "machine": facts}))
    print(f"wrote {out / 'prompt_lookup.json'}")


if __name__ == "__main__":
    main()
