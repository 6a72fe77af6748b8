"""Serving benchmark: the LSTM server's continuous batching, and GPT-2 of the same size under `transformers serve`.

    nice -n 10 python benchmarks/bench_serve.py                    # both tables (~5-10 min on 2 busy cores)
    nice -n 10 python benchmarks/bench_serve.py --skip_gpt2        # only the LSTM's own goals
    python benchmarks/bench_serve.py --quick                       # a tiny smoke run (CI-sized)

Everything runs on loopback with random-init models built here (nothing is downloaded): an LSTMLM (H=512, L=2,
V=8192, the committed tokenizer) served by `scripts/serve.py`, and a `GPT2LMHeadModel` with the parameter count
closest to it (same tokenizer) served by `transformers serve --continuous-batching` (paged KV cache). Each server is a
subprocess; its resident memory (RSS, process tree) is sampled every 20 ms.

Table 1 (the LSTM's goals): 16 streaming `/v1/completions` requests of `--new_tokens` tokens (sampling: temperature
0.8, top_p 0.95, a seed each; ~32-token prompts from tiny-shakespeare), sent one at a time and then all at once to
the same server: aggregate generated tokens/s (goal: concurrent >= 3x one at a time) and the median time to first
token (goal: concurrent <= 2x a lone request's).

Table 2: the same streams at 16 and 64 concurrent requests against both servers: aggregate tokens/s, server peak
RSS, and server memory per active stream ((peak - idle RSS) / streams).
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import psutil  # noqa: E402
import torch  # noqa: E402

try:  # the openai client's HTTP library: httpx, or httpx2 in its newer releases
    import httpx  # noqa: E402
except ImportError:
    import httpx2 as httpx  # noqa: E402

from _generate_common import count_parameters, gpt2_config_matching, machine_facts, print_facts  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden_size", type=int, default=512, help="LSTM hidden size")
    p.add_argument("--num_layers", type=int, default=2, help="LSTM layers")
    p.add_argument("--new_tokens", type=int, default=256, help="tokens generated per request")
    p.add_argument("--prompt_tokens", type=int, default=32, help="prompt length in tokens (approximately)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64], help="concurrent streams for table 2")
    p.add_argument("--requests", type=int, default=16, help="requests in table 1")
    p.add_argument("--threads", type=int, default=None, help="OMP/torch threads of both servers (default: torch's)")
    p.add_argument("--skip_gpt2", action="store_true", help="only table 1 and the LSTM rows of table 2")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, 4 requests of 16 tokens")
    p.add_argument("--work_dir", type=Path, default=None, help="where the model folders go (default: a temp dir)")
    p.add_argument("--startup_timeout", type=float, default=600, help="seconds to wait for a server to start")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden_size, args.new_tokens, args.requests, args.concurrency = 64, 16, 4, [4]
    return args


# ------------------------------------------------------------------------------------------------ models and servers


def build_folders(args, work: Path) -> tuple[Path, Path, dict]:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    torch.manual_seed(0)
    lstm = LSTMLMForCausalLM(
        LSTMLMConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    lstm_dir, gpt2_dir = work / "lstm", work / "gpt2"
    lstm.save_pretrained(lstm_dir)
    tokenizer.save_pretrained(lstm_dir)
    n_lstm = count_parameters(lstm)
    positions = args.prompt_tokens * 2 + args.new_tokens + 64
    config = gpt2_config_matching(n_lstm, len(tokenizer), positions)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    gpt2 = GPT2LMHeadModel(config)
    # `transformers serve` ignores a request's temperature unless the saved generation config samples.
    gpt2.generation_config.do_sample, gpt2.generation_config.temperature, gpt2.generation_config.top_p = True, 0.8, 0.95
    gpt2.save_pretrained(gpt2_dir)
    tokenizer.save_pretrained(gpt2_dir)
    sizes = {
        "lstm": f"LSTMLM H={args.hidden_size} L={args.num_layers} V={len(tokenizer)}: {n_lstm / 1e6:.2f}M",
        "gpt2": f"GPT2LMHeadModel n_embd={config.n_embd} n_layer={config.n_layer} n_head={config.n_head}: "
        f"{count_parameters(gpt2) / 1e6:.2f}M",
        # What one stream's context costs, computed from the shapes (float32): the LSTM's (h, c) per layer, and
        # GPT-2's keys and values per layer for every token of the stream.
        "lstm_state_bytes": 2 * args.num_layers * args.hidden_size * 4,
        "gpt2_kv_bytes_per_token": 2 * config.n_layer * config.n_embd * 4,
    }
    return lstm_dir, gpt2_dir, sizes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess, its URL, and an RSS sampler over its process tree."""

    def __init__(self, kind: str, folder: Path, args):
        self.kind, self.port = kind, free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if kind == "lstm":
            command = [sys.executable, str(REPO_ROOT / "scripts" / "serve.py"), str(folder), "--port", str(self.port)]
            command += ["--served-model-name", "model", "--max-slots", "64", "--log-level", "warning"]
            if args.threads:
                command += ["--threads", str(args.threads)]
            self.model, self.url = "model", f"http://127.0.0.1:{self.port}"
        else:
            exe = Path(sys.executable).with_name("transformers")
            command = [str(exe), "serve", str(folder), "--continuous-batching", "--device", "cpu"]
            # Its paged KV cache is preallocated; left to itself on CPU it sized it at ~14 GiB of RAM here. Sized
            # instead for the largest run: every stream's prompt and new tokens, in blocks of 32 tokens.
            tokens = max(args.concurrency) * (2 * args.prompt_tokens + args.new_tokens + 32)
            command += ["--cb-block-size", "32", "--cb-num-blocks", str(tokens // 32 + 1)]
            command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
            self.model, self.url = str(folder), f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        print(f"[{time.strftime('%H:%M:%S')}] starting the {kind} server", file=sys.stderr, flush=True)
        self.wait_ready(args.startup_timeout)
        self._peak = 0
        self._sampling = False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.kind} server exited:\n{self.log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind} server did not start in {timeout} s")

    def rss(self) -> int:
        root = psutil.Process(self.process.pid)
        total = 0
        for p in [root] + root.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def start_sampling(self) -> None:
        self._peak, self._sampling = self.rss(), True

        def loop():
            while self._sampling:
                self._peak = max(self._peak, self.rss())
                time.sleep(0.02)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> int:
        self._sampling = False
        self._thread.join()
        return max(self._peak, self.rss())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------------------------------------ clients


def make_prompts(n: int, prompt_tokens: int) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")
    text = (REPO_ROOT / "data" / "tinyshakespeare" / "input.txt").read_text()[:200_000]
    ids = tokenizer(text).input_ids
    return [tokenizer.decode(ids[i * 97 : i * 97 + prompt_tokens]) for i in range(n)]


async def one_stream(client, server: Server, prompt: str, seed: int, new_tokens: int) -> dict:
    body = {
        "model": server.model,
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if server.kind == "lstm":
        body["ignore_eos"] = True  # a random model may draw eos; the LSTM server can run every request to the end
    start = time.perf_counter()
    first, chunks, usage = None, 0, None
    async with client.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{server.kind}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{server.kind}: {event}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": (first or end) - start, "seconds": end - start, "tokens": tokens, "start": start, "end": end}


async def run_streams(server: Server, prompts: list[str], new_tokens: int, concurrent: bool) -> dict:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        if concurrent:
            tasks = [one_stream(client, server, p, i, new_tokens) for i, p in enumerate(prompts)]
            results = await asyncio.gather(*tasks)
        else:
            results = [await one_stream(client, server, p, i, new_tokens) for i, p in enumerate(prompts)]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "tokens": tokens,
        "wall": wall,
        "tokens_per_s": tokens / wall,
        "median_ttft": statistics.median(r["ttft"] for r in results),
        "min_tokens": min(r["tokens"] for r in results),
    }


def measure(server: Server, prompts: list[str], new_tokens: int, concurrent: bool) -> dict:
    how = "at once" if concurrent else "one at a time"
    print(f"[{time.strftime('%H:%M:%S')}] {server.kind}: {len(prompts)} streams {how}", file=sys.stderr, flush=True)
    idle = server.rss()
    server.start_sampling()
    result = asyncio.run(run_streams(server, prompts, new_tokens, concurrent))
    result["peak_rss"] = server.stop_sampling()
    result["idle_rss"] = idle
    time.sleep(0.5)
    result["after_rss"] = server.rss()
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    facts = machine_facts(args.threads or torch.get_num_threads())
    print_facts(facts)
    print(f"load average at start: {os.getloadavg()}")
    work_ctx = tempfile.TemporaryDirectory(prefix="bench_serve-") if args.work_dir is None else None
    work = Path(work_ctx.name) if work_ctx else args.work_dir
    lstm_dir, gpt2_dir, sizes = build_folders(args, work)
    print(f"models: {sizes['lstm']}; {sizes['gpt2']}")
    largest = max([args.requests] + args.concurrency)
    prompts = make_prompts(largest, args.prompt_tokens)
    warm = prompts[:2]

    lstm = Server("lstm", lstm_dir, args)
    try:
        asyncio.run(run_streams(lstm, warm, 8, concurrent=True))  # warm-up
        one = measure(lstm, prompts[: args.requests], args.new_tokens, concurrent=False)
        together = measure(lstm, prompts[: args.requests], args.new_tokens, concurrent=True)
        lstm_rows = {args.requests: together}
        for n in args.concurrency:
            if n not in lstm_rows:
                lstm_rows[n] = measure(lstm, prompts[:n], args.new_tokens, concurrent=True)
    finally:
        lstm.stop()

    print(f"\nTable 1: {args.requests} streaming requests of {args.new_tokens} tokens, LSTM server ({sizes['lstm']})")
    print("| requests sent | generated tokens | wall s | aggregate tokens/s | median TTFT ms |")
    print("|---|---|---|---|---|")
    for name, r in (("one at a time", one), ("all at once", together)):
        row = f"| {name} | {r['tokens']} | {r['wall']:.2f} | {r['tokens_per_s']:.0f} | {r['median_ttft'] * 1e3:.1f} |"
        print(row)
    speedup = together["tokens_per_s"] / one["tokens_per_s"]
    ttft_ratio = together["median_ttft"] / one["median_ttft"]
    print(f"aggregate tokens/s: {speedup:.2f}x one at a time (goal >= 3x: {'met' if speedup >= 3 else 'MISSED'})")
    print(f"median TTFT: {ttft_ratio:.2f}x a lone request's (goal <= 2x: {'met' if ttft_ratio <= 2 else 'MISSED'})")

    gpt2_rows = {}
    if not args.skip_gpt2:
        gpt2 = Server("gpt2", gpt2_dir, args)
        try:
            asyncio.run(run_streams(gpt2, warm, 8, concurrent=True))  # warm-up (allocates its paged cache)
            for n in args.concurrency:
                gpt2_rows[n] = measure(gpt2, prompts[:n], args.new_tokens, concurrent=True)
        finally:
            gpt2.stop()

    print(f"\nTable 2: concurrent streams of {args.new_tokens} tokens, server memory from RSS (process tree)")
    print(
        "| server | streams | generated tokens | aggregate tokens/s | idle RSS MiB | peak RSS MiB | "
        "MiB per active stream | RSS after MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in (
        ("LSTMLM, scripts/serve.py", lstm_rows),
        ("GPT-2, transformers serve --continuous-batching", gpt2_rows),
    ):
        for n in args.concurrency:
            if n not in rows:
                continue
            r = rows[n]
            per_stream = (r["peak_rss"] - r["idle_rss"]) / n
            print(
                f"| {name} | {n} | {r['tokens']} | {r['tokens_per_s']:.0f} | {mib(r['idle_rss'])} | "
                f"{mib(r['peak_rss'])} | {mib(per_stream)} | {mib(r['after_rss'])} |"
            )
    stream_tokens = args.prompt_tokens + args.new_tokens
    print(
        f"context per stream, computed from the shapes (float32): LSTM (h, c) {sizes['lstm_state_bytes'] / 1024:.1f} "
        f"KiB whatever the length; GPT-2 keys and values {sizes['gpt2_kv_bytes_per_token'] / 1024:.1f} KiB per token, "
        f"{sizes['gpt2_kv_bytes_per_token'] * stream_tokens / 2**20:.2f} MiB at {stream_tokens} tokens"
    )
    for n in args.concurrency:
        if n in gpt2_rows:
            ratio = lstm_rows[n]["tokens_per_s"] / gpt2_rows[n]["tokens_per_s"]
            print(f"{n} streams: LSTM {ratio:.2f}x GPT-2's aggregate tokens/s")
    print(f"load average at end: {os.getloadavg()}")
    if work_ctx:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
