"""The OpenAI-compatible server (`modeling_lstmlm.serving`): routes, sampling, continuous batching, errors, load.

The servers here run in-process (uvicorn in a thread on a free loopback port) on a small random model with the
committed tokenizer; one test starts `scripts/serve.py` as a subprocess to check SIGTERM.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoTokenizer

from modeling_lstmlm import LSTMLMConfig, LSTMLMForCausalLM
from modeling_lstmlm.serving import (
    BatchEngine,
    GenerationRequest,
    QueueFullError,
    SamplingParams,
    ServerLimits,
    create_app,
)

fastapi = pytest.importorskip("fastapi", reason="needs the [serve] extra")
uvicorn = pytest.importorskip("uvicorn", reason="needs the [serve] extra")
try:  # the openai client's HTTP library: httpx, or httpx2 in its newer releases
    import httpx
except ImportError:
    httpx = pytest.importorskip("httpx2", reason="needs httpx or httpx2 (comes with the openai client)")
openai = pytest.importorskip("openai", reason="needs the openai client ([test] extra)")

from tests.conftest import REPO_ROOT  # noqa: E402

MODEL_ID = "lstmlm-test"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(REPO_ROOT / "tokenizer")


def make_model(tokenizer, hidden_size: int = 32, seed: int = 0) -> LSTMLMForCausalLM:
    """A random model whose greedy output does not collapse into one repeated token (sharpened output layer)."""
    torch.manual_seed(seed)
    config = LSTMLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LSTMLMForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(engine: BatchEngine, model_id: str = MODEL_ID):
    """Serve `engine` on a free loopback port in a background thread; yields the base URL."""
    app = create_app(engine, model_id)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        engine.shutdown()


@pytest.fixture(scope="module")
def server(model, tokenizer):
    limits = ServerLimits(max_slots=8, max_queue=64, max_prompt_tokens=200, max_tokens_cap=100_000)
    engine = BatchEngine(model, tokenizer, limits, prefill_tokens=64).start()
    with running_server(engine) as url:
        yield url, engine


@pytest.fixture(scope="module")
def http(server):
    """A plain HTTP client on the server (one connection pool: a new client per call costs ~0.2 s here)."""
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as session:
        yield session


@pytest.fixture
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def chat_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, sanitize_control_tokens=True
    )["input_ids"]


def greedy_reference(model, prompt_ids, max_new_tokens, eos_token_id=None) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=1)
    return out[0, ids.shape[1] :].tolist()


def wait_idle(engine: BatchEngine, timeout: float = 5.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        stats = engine.stats()
        if stats["busy_slots"] == 0 and stats["queued"] == 0 and stats["cache_rows"] == 0:
            return stats
        time.sleep(0.01)
    return engine.stats()


def sse_events(response) -> list:
    """The `data:` payloads of a server-sent-events response, `[DONE]` included as a string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


# ---------------------------------------------------------------------------------------------------------------------
# Routes, through the unchanged openai client


def test_models_route(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_chat_greedy_equals_generate(client, model, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who goes there?"}]
    prompt_ids = chat_ids(tokenizer, messages)
    reference = greedy_reference(model, prompt_ids, 24)
    assert len(set(reference)) > 5, "the test model's greedy output collapsed"
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == tokenizer.decode(reference, skip_special_tokens=True)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 24
    assert reply.usage.total_tokens == len(prompt_ids) + 24


def test_chat_stream_equals_non_stream(client):
    kwargs = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Speak."}], max_tokens=30, temperature=0)
    whole = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30


def test_completion_stream_and_not(client, http, model, tokenizer):
    prompt = "First Citizen:\nBefore we proceed"
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    reference = greedy_reference(model, prompt_ids, 20)
    whole = client.completions.create(
        model=MODEL_ID, prompt=prompt, max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    assert whole.object == "text_completion"
    assert whole.choices[0].text == tokenizer.decode(reference, skip_special_tokens=True)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt_ids), 20)
    # The raw SSE wire format: `data: {json}` events separated by blank lines, then `data: [DONE]`.
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": 20, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json={**body, "ignore_eos": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "text_completion" for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole.choices[0].text
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    # A prompt given as token ids reads the same.
    by_ids = client.completions.create(
        model=MODEL_ID, prompt=prompt_ids, max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    assert by_ids.choices[0].text == whole.choices[0].text


def test_sampling_vs_greedy_and_seed(client):
    kwargs = dict(model=MODEL_ID, prompt="To be", max_tokens=24, extra_body={"ignore_eos": True})
    greedy = client.completions.create(**kwargs, temperature=0).choices[0].text
    assert client.completions.create(**kwargs, temperature=0).choices[0].text == greedy
    first = client.completions.create(**kwargs, temperature=1.0, top_p=0.9, seed=1).choices[0].text
    again = client.completions.create(**kwargs, temperature=1.0, top_p=0.9, seed=1).choices[0].text
    other = client.completions.create(**kwargs, temperature=1.0, top_p=0.9, seed=2).choices[0].text
    assert first == again
    assert first != other
    assert first != greedy


def test_chat_template_and_stop_token(server, http, model, tokenizer):
    """The prompt is the tokenizer's chat template; a user's typed `<|end|>` stays text; `<|end|>` ends the turn."""
    url, engine = server
    messages = [{"role": "user", "content": "a <|end|> b"}]
    prompt_ids = chat_ids(tokenizer, messages)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    assert prompt_ids.count(end_id) == 1  # only the template's own closing of the user turn
    reference = greedy_reference(model, prompt_ids, 16)
    # Pretend a later greedy token (the first new one after the 3rd) is where the turn ends: a request whose stop ids
    # include it stops there, that token counted but not in the text.
    k = next(i for i in range(3, len(reference)) if reference[i] not in reference[:i])
    stop_id = reference[k]
    result = engine.generate(prompt_ids, SamplingParams(max_tokens=16, temperature=0, stop_token_ids=[stop_id]))
    assert result["token_ids"] == reference[: k + 1]
    assert result["finish_reason"] == "stop"
    assert result["text"] == tokenizer.decode(reference[:k], skip_special_tokens=True)
    assert result["usage"]["completion_tokens"] == k + 1
    response = http.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": messages, "max_tokens": 1})
    assert response.json()["usage"]["prompt_tokens"] == len(prompt_ids)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stop_strings(client, tokenizer, stream):
    kwargs = dict(model=MODEL_ID, prompt="Hark", max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[15:19]  # four characters from the middle of the greedy text
    assert stop and full.find(stop) >= 1
    if stream:
        chunks = list(client.completions.create(**kwargs, stop=[stop, "\u2603never"], stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        choice = client.completions.create(**kwargs, stop=[stop, "\u2603never"]).choices[0]
        text, reason = choice.text, choice.finish_reason
    assert text == full[: full.find(stop)]
    assert reason == "stop"


# ---------------------------------------------------------------------------------------------------------------------
# Continuous batching


def test_batched_requests_equal_each_alone(model, tokenizer):
    """Rows decoded together (joining and leaving at different steps) give the ids each request gives alone.

    Greedy and seeded sampling; the batched step's logits differ from a lone row's only by float rounding (the
    model's own padded-batch tests hold them within 1e-5), which does not change these ids.
    """
    prompts = ["ROMEO:", "First Citizen:\nWe are accounted poor", "O", "What light through yonder window", "Nay"]
    params = [
        SamplingParams(max_tokens=12 + 5 * i, temperature=0 if i % 2 else 0.9, top_p=0.95, seed=i, stop_token_ids=[])
        for i in range(len(prompts))
    ]
    ids = [tokenizer(p).input_ids for p in prompts]
    engine = BatchEngine(model, tokenizer, ServerLimits(max_slots=8), prefill_tokens=8).start()
    try:
        alone = [engine.generate(i, p, timeout=60)["token_ids"] for i, p in zip(ids, params, strict=True)]
        assert engine.max_rows_seen == 1
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(
                pool.map(lambda a: engine.generate(*a, timeout=60)["token_ids"], zip(ids, params, strict=True))
            )
        assert engine.max_rows_seen == len(prompts)  # they really shared the step
    finally:
        engine.shutdown()
    assert together == alone
    for i, p in enumerate(params):
        assert len(alone[i]) == p.max_tokens
        if p.temperature == 0:
            assert alone[i] == greedy_reference(model, ids[i], p.max_tokens)
    assert len({tuple(a) for a in alone}) == len(alone)


def test_long_prompt_is_read_in_chunks_between_steps(model, tokenizer):
    """A prompt longer than `prefill_tokens` is read over several iterations and gives what one pass gives."""
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 4
    prompt_ids = tokenizer(text).input_ids
    engine = BatchEngine(model, tokenizer, ServerLimits(max_slots=4), prefill_tokens=7).start()
    try:
        result = engine.generate(prompt_ids, SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[]), 60)
    finally:
        engine.shutdown()
    assert len(prompt_ids) > 7 * 5
    assert result["token_ids"] == greedy_reference(model, prompt_ids, 10)


def test_queue_full_is_429(model, tokenizer):
    engine = BatchEngine(model, tokenizer, ServerLimits(max_slots=1, max_queue=1, max_tokens_cap=10**6))
    # The engine is not started: the first request takes the free slot's place in the queue, the second waits.
    for _ in range(2):
        engine.submit(GenerationRequest([0], SamplingParams(max_tokens=5), tokenizer, lambda events: None))
    with pytest.raises(QueueFullError):
        engine.submit(GenerationRequest([0], SamplingParams(max_tokens=5), tokenizer, lambda events: None))
    with running_server(engine) as url:
        response = httpx.post(
            f"{url}/v1/completions", json={"model": MODEL_ID, "prompt": "a", "max_tokens": 5}, timeout=30
        )
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "queue_full"


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a 4xx JSON error, and the server goes on serving

GOOD_CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
GOOD_COMPLETION = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 2}

ERRORS = [
    ("invalid-json", "chat/completions", b"{not json", 400, "not valid JSON"),
    ("not-an-object", "completions", b"[1, 2]", 400, "JSON object"),
    ("unknown-model", "chat/completions", {**GOOD_CHAT, "model": "gpt-4"}, 404, "does not exist"),
    ("no-model", "completions", {"prompt": "hi"}, 400, "`model`"),
    ("max-tokens-0", "chat/completions", {**GOOD_CHAT, "max_tokens": 0}, 400, "`max_tokens` must be in [1,"),
    ("max-tokens-over-cap", "completions", {**GOOD_COMPLETION, "max_tokens": 100_001}, 400, "[1, 100000]"),
    ("max-tokens-string", "completions", {**GOOD_COMPLETION, "max_tokens": "5"}, 400, "must be an integer"),
    ("temperature-string", "chat/completions", {**GOOD_CHAT, "temperature": "hot"}, 400, "`temperature`"),
    ("temperature-negative", "completions", {**GOOD_COMPLETION, "temperature": -1}, 400, "`temperature`"),
    ("top-p-zero", "completions", {**GOOD_COMPLETION, "top_p": 0}, 400, "`top_p`"),
    ("seed-float", "completions", {**GOOD_COMPLETION, "seed": 1.5}, 400, "`seed`"),
    ("stop-number", "completions", {**GOOD_COMPLETION, "stop": 3}, 400, "`stop`"),
    ("stream-string", "completions", {**GOOD_COMPLETION, "stream": "yes"}, 400, "`stream`"),
    ("n-2", "completions", {**GOOD_COMPLETION, "n": 2}, 400, "`n`"),
    ("empty-messages", "chat/completions", {**GOOD_CHAT, "messages": []}, 400, "non-empty list"),
    ("messages-string", "chat/completions", {**GOOD_CHAT, "messages": "hi"}, 400, "non-empty list"),
    ("bad-role", "chat/completions", {**GOOD_CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
    ("content-number", "chat/completions", {**GOOD_CHAT, "messages": [{"role": "user", "content": 3}]}, 400, "content"),
    ("prompt-missing", "completions", {"model": MODEL_ID}, 400, "`prompt`"),
    ("prompt-bad-ids", "completions", {**GOOD_COMPLETION, "prompt": [1, 99999]}, 400, "token ids"),
    ("prompt-too-long", "completions", {**GOOD_COMPLETION, "prompt": "word " * 400}, 400, "at most 200"),
    (
        "chat-too-long",
        "chat/completions",
        {**GOOD_CHAT, "messages": [{"role": "user", "content": "word " * 400}]},
        400,
        "at most 200",
    ),
]


@pytest.mark.parametrize("route,body,status,needle", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_requests_get_json_errors(server, http, route, body, status, needle):
    url, engine = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(f"/v1/{route}", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"
    # ... and the server goes on serving.
    good = GOOD_CHAT if route == "chat/completions" else GOOD_COMPLETION
    assert http.post(f"/v1/{route}", json=good).status_code == 200
    assert wait_idle(engine)["busy_slots"] == 0


def test_openai_client_raises_on_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL_ID, prompt="x", max_tokens=0)


# ---------------------------------------------------------------------------------------------------------------------
# Disconnects, load, memory, shutdown


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_disconnect_frees_the_slot(server, stream):
    url, engine = server
    assert wait_idle(engine)["busy_slots"] == 0
    body = {"model": MODEL_ID, "prompt": "Once", "max_tokens": 100_000, "stream": stream, "ignore_eos": True}
    if stream:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert engine.stats()["busy_slots"] == 1
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=1.0)
    # 100,000 tokens would take far longer than this: the slot was freed because the client left.
    stats = wait_idle(engine, timeout=3.0)
    assert (stats["busy_slots"], stats["cache_rows"]) == (0, 0)
    steps = engine.stats()["steps"]
    time.sleep(0.2)
    assert engine.stats()["steps"] == steps  # nothing decodes for the departed client


def test_load_200_requests_32_clients(server, tokenizer):
    """200 requests from 32 concurrent clients (half streaming): all complete with the right token count, no error,
    no slot left busy, and the batch really held many rows at once."""
    url, engine = server
    engine.max_rows_seen = 0
    http = httpx.Client(base_url=url, timeout=120)  # one connection pool for the 32 client threads

    def one(i: int):
        max_tokens = 4 + i % 9
        body = {"model": MODEL_ID, "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True}
        route = "completions" if i % 3 else "chat/completions"
        if route == "completions":
            body["prompt"] = f"Request {i} says"
        else:
            body["messages"] = [{"role": "user", "content": f"Request {i}"}]
        if i % 2:
            body["stream"], body["stream_options"] = True, {"include_usage": True}
            with http.stream("POST", f"/v1/{route}", json=body) as response:
                assert response.status_code == 200
                events = sse_events(response)
            assert events[-1] == "[DONE]"
            usage = events[-2]["usage"]
        else:
            response = http.post(f"/v1/{route}", json=body)
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
        return usage["completion_tokens"] == max_tokens

    with http, ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results)
    stats = wait_idle(engine)
    assert (stats["busy_slots"], stats["queued"], stats["cache_rows"]) == (0, 0, 0)
    assert engine.max_rows_seen == engine.limits.max_slots  # 32 clients kept all 8 slots full


def test_memory_returns_to_idle_after_burst(server):
    psutil = pytest.importorskip("psutil")
    url, engine = server
    body = {"model": MODEL_ID, "prompt": "Burst", "max_tokens": 32, "ignore_eos": True}

    def burst():
        with httpx.Client(base_url=url, timeout=120) as http, ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: http.post("/v1/completions", json=body), range(32)))
        assert all(r.status_code == 200 for r in responses)
        wait_idle(engine)

    burst()  # warm-up: allocator pools, thread pools, imports
    idle = psutil.Process().memory_info().rss
    for _ in range(2):
        burst()
    assert engine.stats()["cache_rows"] == 0
    assert psutil.Process().memory_info().rss - idle < 32 * 2**20


def test_shutdown_ends_open_streams(model, tokenizer):
    """Stopping the engine (what SIGINT/SIGTERM do first) ends every open stream with an error event and [DONE]."""
    engine = BatchEngine(model, tokenizer, ServerLimits(max_slots=2, max_tokens_cap=10**6)).start()
    with running_server(engine) as url:
        body = {"model": MODEL_ID, "prompt": "Go", "max_tokens": 10**6, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            engine.shutdown()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: ") :])["error"]["code"] == "aborted"
        refused = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=30)
        assert refused.status_code == 503


@pytest.mark.slow
def test_serve_script_sigterm(tmp_path, tokenizer):
    """`scripts/serve.py FOLDER` serves a saved folder; SIGTERM ends an open stream and exits cleanly."""
    folder = tmp_path / "model"
    make_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "serve.py"),
            str(folder),
            "--port",
            str(port),
            "--served-model-name",
            "m",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.time() < deadline, process.stdout.read().decode()
            time.sleep(0.2)
        body = {"model": "m", "prompt": "Go", "max_tokens": 4000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "data: [DONE]" in rest  # the stream was ended, not cut
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_saved_generation_configs_sample(tokenizer):
    """Folders from scripts/train.py and finetune_chat.py sample by default, so temperature/top_p mean something."""
    from modeling_lstmlm.sft import chat_generation_config
    from modeling_lstmlm.training import ModelArguments, build_model

    model = build_model(ModelArguments(hidden_size=16, num_hidden_layers=1), tokenizer)
    for config in (model.generation_config, chat_generation_config(model, tokenizer)):
        assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.8, 0.95, 0)
        config.validate(strict=True)  # no "flag ignored" warnings
    ids = torch.tensor([tokenizer("ROMEO:").input_ids])
    torch.manual_seed(0)
    first = model.generate(ids, max_new_tokens=8)
    torch.manual_seed(1)
    assert not torch.equal(first, model.generate(ids, max_new_tokens=8))  # sampled, not greedy


@pytest.mark.slow
def test_bench_serve_quick(tmp_path):
    """`benchmarks/bench_serve.py --quick --skip_gpt2` runs end to end (two server phases) and prints its table."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_serve.py"), "--quick", "--skip_gpt2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| one at a time | 64 |" in result.stdout and "| all at once | 64 |" in result.stdout
