"""An OpenAI-compatible server that decodes every active conversation in one batched recurrent step.

An LSTM's whole context is its per-layer `(h, c)`: a few KiB per conversation, whatever its length. `BatchEngine`
keeps the state of every active request as one row of a single `LSTMLMCache` and runs one engine thread:

- a request waits in a bounded queue until one of `max_slots` slots is free (`QueueFullError` beyond it: HTTP 429);
- its prompt is then read in chunks of at most `prefill_tokens` tokens per engine iteration, batched with the other
  prompts being read (left-padded; padding never touches the state), so a long prompt never stalls the decoding rows;
- once the prompt is read, its first token is sampled and its state joins the decoding batch as one more row;
- every iteration runs ONE forward step for all decoding rows (`model(input_ids=(rows, 1), cache=...)`), samples each
  row with its own temperature / top_p / top_k and its own `torch.Generator` (seeded by the request's `seed`), and
  removes the rows that finished (stop token, stop string, `max_tokens`) or whose client went away, at once.

The engine uses only the model's public interface (`model(input_ids=..., attention_mask=..., cache=LSTMLMCache,
use_cache=True)`, `cache.get_state(i)` / `cache.set_state(i, h, c)`); rows are added and removed by building a new
cache from the gathered rows, never by writing into the model.

`create_app` wraps an engine in a FastAPI app with the OpenAI routes (`/v1/models`, `/v1/chat/completions`,
`/v1/completions`, streaming as server-sent events or not) plus `/health`; `serve_main` is the command line
(`scripts/serve.py`, `lstmlm serve`). FastAPI and uvicorn come with the `[serve]` extra (`pip install -e ".[serve]"`).
"""

import argparse
import asyncio
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils import logging

from .modeling_lstmlm import LSTMLMCache

logger = logging.get_logger(__name__)

END_OF_TURN = "<|end|>"


def _require_serve_extra():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f'Serving needs FastAPI and uvicorn ({error}); install them with `pip install -e ".[serve]"` '
            "(or `pip install lstmlm[serve]`)"
        ) from error


# ---------------------------------------------------------------------------------------------------------------------
# Requests and their validation


class ServingError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def error_type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class QueueFullError(ServingError):
    def __init__(self, max_queue: int):
        super().__init__(
            429,
            f"The server is at capacity: all slots are busy and {max_queue} requests are queued; retry later",
            code="queue_full",
        )


@dataclass
class SamplingParams:
    """How one request decodes. `temperature=0` is greedy; `top_k=0` and `top_p=1` turn those filters off."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class ServerLimits:
    """What the server accepts. `max_slots` requests decode at once; `max_queue` more may wait."""

    max_slots: int = 64
    max_queue: int = 256
    max_prompt_tokens: int = 8192
    max_tokens_cap: int = 4096
    default_max_tokens: int = 256
    max_stop_strings: int = 8


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _optional(body: dict, name: str, check: Callable[[Any], bool], expected: str, default=None):
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise ServingError(400, f"`{name}` must be {expected}, got {json.dumps(value)[:80]}", param=name)
    return value


def _generation_defaults(generation_config) -> dict:
    """The sampling defaults a saved generation config sets (greedy unless it says `do_sample=True`)."""
    if generation_config is None or not getattr(generation_config, "do_sample", False):
        return {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    return {
        "temperature": float(generation_config.temperature if generation_config.temperature is not None else 1.0),
        "top_p": float(generation_config.top_p if generation_config.top_p is not None else 1.0),
        "top_k": int(generation_config.top_k or 0),
    }


def _parse_common(body: dict, limits: ServerLimits, defaults: dict) -> tuple[SamplingParams, bool, bool]:
    """The fields both routes share -> (sampling, stream, include_usage)."""
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise ServingError(400, f"`{name}` must be 1 (one choice per request)", param=name)
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise ServingError(400, "`logprobs` is not supported", param="logprobs")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens_cap)
    elif not _is_int(max_tokens):
        raise ServingError(400, f"`{name}` must be an integer, got {json.dumps(max_tokens)[:80]}", param=name)
    elif max_tokens < 1 or max_tokens > limits.max_tokens_cap:
        raise ServingError(
            400, f"`{name}` must be in [1, {limits.max_tokens_cap}] on this server, got {max_tokens}", param=name
        )
    temperature = _optional(body, "temperature", _is_number, "a number in [0, 2]", defaults["temperature"])
    if not 0 <= temperature <= 2:
        raise ServingError(400, f"`temperature` must be in [0, 2], got {temperature}", param="temperature")
    top_p = _optional(body, "top_p", _is_number, "a number in (0, 1]", defaults["top_p"])
    if not 0 < top_p <= 1:
        raise ServingError(400, f"`top_p` must be in (0, 1], got {top_p}", param="top_p")
    top_k = _optional(body, "top_k", _is_int, "an integer >= 0 (0: off)", defaults["top_k"])
    if top_k < 0:
        raise ServingError(400, f"`top_k` must be >= 0 (0: off), got {top_k}", param="top_k")
    seed = _optional(body, "seed", _is_int, "an integer")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ServingError(400, "`stop` must be a non-empty string or a list of non-empty strings", param="stop")
    if len(stop) > limits.max_stop_strings:
        raise ServingError(
            400, f"`stop` takes at most {limits.max_stop_strings} strings, got {len(stop)}", param="stop"
        )
    stream = _optional(body, "stream", lambda v: isinstance(v, bool), "a boolean", False)
    options = _optional(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    include_usage = bool(options.get("include_usage", False))
    ignore_eos = _optional(body, "ignore_eos", lambda v: isinstance(v, bool), "a boolean", False)
    params = SamplingParams(
        max_tokens=int(max_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        seed=seed,
        stop=list(stop),
    )
    params.stop_token_ids = [] if ignore_eos else None  # filled in by the caller
    return params, stream, include_usage


def _stop_token_ids(tokenizer, generation_config, chat: bool) -> list[int]:
    ids = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    if chat:  # a chat turn ends with <|end|> even where the saved generation config only knows eos
        end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(end_id, int) and end_id != tokenizer.unk_token_id and end_id not in ids:
            ids.append(end_id)
    return ids


def _message_text(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts carry anything for this model
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ServingError(
                    400, f"messages[{index}].content parts must be {{'type': 'text', 'text': str}}", param="messages"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise ServingError(400, f"messages[{index}].content must be a string or a list of text parts", param="messages")


def parse_chat_request(body, tokenizer, generation_config, limits: ServerLimits):
    """Validate a `/v1/chat/completions` body -> (prompt ids, sampling, stream, include_usage).

    Raises `ServingError` (HTTP 400) naming the problem.
    """
    if not isinstance(body, dict):
        raise ServingError(400, "The request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServingError(400, "`messages` must be a non-empty list of {role, content} objects", param="messages")
    rendered = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ServingError(400, f"messages[{i}] must be an object with a string `role`", param="messages")
        role = "system" if message["role"] == "developer" else message["role"]
        if role not in ("system", "user", "assistant"):
            raise ServingError(
                400, f"messages[{i}].role must be system, user or assistant, got {message['role']!r}", param="messages"
            )
        rendered.append({"role": role, "content": _message_text(message, i)})
    if getattr(tokenizer, "chat_template", None) is None:
        raise ServingError(400, "This model's tokenizer has no chat template: use /v1/completions", param="messages")
    params, stream, include_usage = _parse_common(body, limits, _generation_defaults(generation_config))
    try:
        # User text is encoded byte by byte: a typed "<|end|>" stays text and cannot forge a turn.
        prompt_ids = tokenizer.apply_chat_template(
            rendered, add_generation_prompt=True, tokenize=True, return_dict=True, sanitize_control_tokens=True
        )["input_ids"]
    except Exception as error:  # the template's own raise_exception (jinja2 TemplateError) and friends
        raise ServingError(400, f"The chat template refused the messages: {error}", param="messages") from error
    prompt_ids = list(prompt_ids)
    _check_prompt_length(prompt_ids, limits)
    if params.stop_token_ids is None:
        params.stop_token_ids = _stop_token_ids(tokenizer, generation_config, chat=True)
    return prompt_ids, params, stream, include_usage


def parse_completion_request(body, tokenizer, generation_config, limits: ServerLimits):
    """Validate a `/v1/completions` body -> (prompt ids, sampling, stream, include_usage).

    `prompt` is a string, a one-string list, or a list of token ids; it is read as the model reads text (no chat
    template). An empty prompt starts from the bos token.
    """
    if not isinstance(body, dict):
        raise ServingError(400, "The request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        vocab = len(tokenizer)
        if not all(0 <= t < vocab for t in prompt):
            raise ServingError(400, f"`prompt` token ids must be in [0, {vocab})", param="prompt")
        prompt_ids = list(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise ServingError(400, "`prompt` takes one string per request on this server", param="prompt")
    else:
        raise ServingError(400, "`prompt` must be a string or a list of token ids", param="prompt")
    params, stream, include_usage = _parse_common(body, limits, _generation_defaults(generation_config))
    if body.get("echo"):
        raise ServingError(400, "`echo` is not supported", param="echo")
    if not prompt_ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt_ids = [start]
    _check_prompt_length(prompt_ids, limits)
    if params.stop_token_ids is None:
        params.stop_token_ids = _stop_token_ids(tokenizer, generation_config, chat=False)
    return prompt_ids, params, stream, include_usage


def _check_prompt_length(prompt_ids: list[int], limits: ServerLimits) -> None:
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise ServingError(
            400,
            f"The prompt has {len(prompt_ids)} tokens; this server takes at most {limits.max_prompt_tokens}",
            param="messages",
            code="context_length_exceeded",
        )


# ---------------------------------------------------------------------------------------------------------------------
# The engine


class _Detokenizer:
    """Turns a growing list of token ids into text deltas (never splitting a multi-byte character), and applies stop
    strings: text that might be the start of a stop string is held back until it is known not to be one."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.max_stop = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # all the text decoded so far
        self.sent = 0  # how much of `text` has been handed out

    def add(self, token_id: int) -> tuple[str, bool]:
        """Adds one token -> (text that may be sent now, whether a stop string ended the text)."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            start = len(self.text)
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.stop:
                window = self.text[max(0, start - self.max_stop + 1) :]
                base = max(0, start - self.max_stop + 1)
                hits = [base + window.find(s) for s in self.stop if s in window]
                if hits:
                    self.text = self.text[: min(hits)]
                    return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held()), False

    def _held(self) -> int:
        """Length of the longest end of the text that is the start of a stop string."""
        for n in range(min(self.max_stop - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : end], end
        return out

    def flush(self) -> str:
        """What is left at the end (held-back text that turned out not to be a stop string)."""
        return self._take(len(self.text))


class GenerationRequest:
    """One request inside the engine. `sink(events)` is called from the engine thread with this request's new events,
    at most once per engine step: `("delta", text)`, then one `("finish", reason, usage)` or `("error", message)`.
    """

    def __init__(self, prompt_ids: list[int], params: SamplingParams, tokenizer, sink: Callable[[list], None]):
        self.id = uuid.uuid4().hex
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        self.detok = _Detokenizer(tokenizer, params.stop)
        self.output_ids: list[int] = []
        self.prefill_pos = 0  # prompt tokens read so far
        self.state: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # while its prompt is being read
        self.next_token: int | None = None
        self.cancelled = False
        self.finished = False
        self.finish_reason: str | None = None
        self.submitted = time.perf_counter()
        self.events: list = []


class BatchEngine:
    """Continuous batching of recurrent state: one engine thread, one batched decoding step for all active requests.

    Args:
        model: an `LSTMLMForCausalLM` (eval mode is set here).
        tokenizer: its tokenizer.
        limits (`ServerLimits`): slots, queue length and request limits.
        prefill_tokens (`int`, defaults to 2048): most prompt tokens read per engine iteration (shared by the prompts
            being read at that moment); longer prompts are read over several iterations, between decoding steps.

    Example:

    ```python
    >>> engine = BatchEngine(model, tokenizer).start()
    >>> engine.generate(tokenizer("ROMEO:").input_ids, SamplingParams(max_tokens=20, temperature=0))
    {'text': ..., 'token_ids': [...], 'finish_reason': 'length', ...}
    >>> engine.shutdown()
    ```
    """

    def __init__(self, model, tokenizer, limits: ServerLimits | None = None, prefill_tokens: int = 2048):
        if prefill_tokens < 1:
            raise ValueError(f"`prefill_tokens` must be >= 1, got {prefill_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.limits = limits or ServerLimits()
        if self.limits.max_slots < 1 or self.limits.max_queue < 0:
            raise ValueError(f"`max_slots` must be >= 1 and `max_queue` >= 0, got {self.limits}")
        self.prefill_tokens = prefill_tokens
        self.num_layers = model.config.num_hidden_layers
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        self._lock = threading.Condition()
        self._queue: deque[GenerationRequest] = deque()
        self._prefilling: list[GenerationRequest] = []
        self._rows: list[GenerationRequest] = []  # decoding, in the order of the cache's rows
        self._cache: LSTMLMCache | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decoding steps run (for tests and stats)
        self.max_rows_seen = 0

    # -- public, thread-safe --------------------------------------------------------------------------------------

    def start(self) -> "BatchEngine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lstmlm-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises `QueueFullError` when the queue is full, `ServingError(503)` when shutting down."""
        with self._lock:
            if self._stopping:
                raise ServingError(503, "The server is shutting down", code="shutting_down")
            free_slots = max(0, self.limits.max_slots - len(self._rows) - len(self._prefilling))
            if len(self._queue) >= self.limits.max_queue + free_slots:
                raise QueueFullError(self.limits.max_queue)
            self._queue.append(request)
            self._lock.notify()

    def cancel(self, request: GenerationRequest) -> None:
        """The client went away: the request leaves the batch at the engine's next iteration."""
        request.cancelled = True
        with self._lock:
            self._lock.notify()

    def stats(self) -> dict:
        with self._lock:
            return {
                "decoding": len(self._rows),
                "prefilling": len(self._prefilling),
                "queued": len(self._queue),
                "slots": self.limits.max_slots,
                "busy_slots": len(self._rows) + len(self._prefilling),
                "cache_rows": 0 if self._cache is None else self._cache_rows(),
                "steps": self.steps,
            }

    def shutdown(self, wait: bool = True) -> None:
        """Stop: every unfinished request ends with an error event; the engine thread exits."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def generate(self, prompt_ids: list[int], params: SamplingParams, timeout: float | None = None) -> dict:
        """Blocking helper (tests, scripts): submit one request and wait for its whole result."""
        done = threading.Event()
        result = {"text": "", "finish_reason": None, "error": None}

        def sink(events):
            for event in events:
                if event[0] == "delta":
                    result["text"] += event[1]
                elif event[0] == "finish":
                    result["finish_reason"], result["usage"] = event[1], event[2]
                    done.set()
                else:
                    result["error"] = event[1]
                    done.set()

        request = GenerationRequest(prompt_ids, params, self.tokenizer, sink)
        self.submit(request)
        if not done.wait(timeout):
            self.cancel(request)
            raise TimeoutError("generation did not finish in time")
        result["token_ids"] = list(request.output_ids)
        return result

    # -- the engine thread ----------------------------------------------------------------------------------------

    def _cache_rows(self) -> int:
        state = self._cache.get_state(0)
        return 0 if state is None else state[0].shape[0]

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._iteration():
                    pass
        except Exception as error:  # a bug or an out-of-memory: fail every request loudly, accept no more
            logger.error(f"The serving engine stopped: {error!r}")
            with self._lock:
                self._stopping = True
            self._abort_all(f"internal error: {error!r}")
            raise

    def _iteration(self) -> bool:
        with self._lock:
            while not (self._stopping or self._queue or self._prefilling or self._rows):
                self._lock.wait()
            if self._stopping:
                stopping = True
            else:
                stopping = False
                while self._queue and len(self._rows) + len(self._prefilling) < self.limits.max_slots:
                    self._prefilling.append(self._queue.popleft())
        if stopping:
            self._abort_all("The server is shutting down")
            return False
        self._drop_cancelled()
        if self._prefilling:
            self._prefill_step()
        if self._rows:
            self._decode_step()
        return True

    def _abort_all(self, message: str) -> None:
        with self._lock:
            everyone = list(self._queue) + self._prefilling + self._rows
            self._queue.clear()
            self._prefilling, self._rows, self._cache = [], [], None
        for request in everyone:
            if not request.finished:
                request.finished = True
                self._deliver(request, [("error", message)])

    def _deliver(self, request: GenerationRequest, events: list) -> None:
        try:
            request.sink(events)
        except Exception as error:  # a sink whose loop is gone: the request is over anyway
            logger.warning(f"Could not deliver events to request {request.id}: {error!r}")
            request.cancelled = True

    def _drop_cancelled(self) -> None:
        with self._lock:
            if any(r.cancelled for r in self._queue):
                self._queue = deque(r for r in self._queue if not r.cancelled)
            self._prefilling = [r for r in self._prefilling if not r.cancelled]
            if any(r.cancelled for r in self._rows):
                self._keep_rows([i for i, r in enumerate(self._rows) if not r.cancelled])

    def _keep_rows(self, keep: list[int]) -> None:
        """Keep these rows of the decoding batch (a new cache gathered from the old one). Caller holds the lock."""
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = None
            return
        index = torch.tensor(keep, device=self.device)
        cache = LSTMLMCache(config=self.model.config)
        for layer in range(self.num_layers):
            h, c = self._cache.get_state(layer)
            cache.set_state(layer, h.index_select(0, index), c.index_select(0, index))
        self._cache = cache

    def _add_rows(self, requests: list[GenerationRequest], states: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append rows to the decoding batch; `states[layer]` is `(h, c)` for the new rows. Caller holds the lock."""
        cache = LSTMLMCache(config=self.model.config)
        for layer in range(self.num_layers):
            h, c = states[layer]
            if self._cache is not None:
                old_h, old_c = self._cache.get_state(layer)
                h, c = torch.cat((old_h, h)), torch.cat((old_c, c))
            cache.set_state(layer, h, c)
        self._cache = cache
        self._rows.extend(requests)
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _prefill_step(self) -> None:
        """Read the next chunk of every prompt being read (up to `prefill_tokens` in all), as one padded batch."""
        batch, chunks, budget = [], [], self.prefill_tokens
        for request in self._prefilling:
            if budget <= 0:
                break
            take = min(len(request.prompt_ids) - request.prefill_pos, budget)
            batch.append(request)
            chunks.append(request.prompt_ids[request.prefill_pos : request.prefill_pos + take])
            budget -= take
        width = max(len(c) for c in chunks)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, chunk in enumerate(chunks):  # left padding: every row's last column is a real token
            input_ids[row, width - len(chunk) :] = torch.tensor(chunk, dtype=torch.long)
            mask[row, width - len(chunk) :] = 1
        cache = LSTMLMCache(config=self.model.config)
        if any(r.state is not None for r in batch):
            hidden = self.model.config.hidden_size
            for layer in range(self.num_layers):
                zeros = torch.zeros(1, hidden, device=self.device)
                hs = [r.state[layer][0] if r.state is not None else zeros for r in batch]
                cs = [r.state[layer][1] if r.state is not None else zeros for r in batch]
                cache.set_state(layer, torch.cat(hs), torch.cat(cs))
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device) if width > min(len(c) for c in chunks) else None,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.cache
        states = [cache.get_state(layer) for layer in range(self.num_layers)]
        done = []
        for row, (request, chunk) in enumerate(zip(batch, chunks, strict=True)):
            request.prefill_pos += len(chunk)
            if request.prefill_pos < len(request.prompt_ids):
                request.state = [(h[row : row + 1].clone(), c[row : row + 1].clone()) for h, c in states]
            else:
                done.append(row)
        if not done:
            return
        logits = out.logits[done, -1]  # (done, vocab)
        ready = [batch[row] for row in done]
        tokens = self._sample(logits, ready)
        joining, joining_rows = [], []
        for request, row, token in zip(ready, done, tokens, strict=True):
            request.state = None
            if not self._append(request, token):
                joining.append(request)
                joining_rows.append(row)
        with self._lock:
            finished = set(id(r) for r in ready)
            self._prefilling = [r for r in self._prefilling if id(r) not in finished]
            if joining:
                index = torch.tensor(joining_rows, device=self.device)
                new_states = [(h.index_select(0, index), c.index_select(0, index)) for h, c in states]
                self._add_rows(joining, new_states)

    def _decode_step(self) -> None:
        """One token for every decoding row, in one forward step."""
        rows = self._rows
        input_ids = torch.tensor([[r.next_token] for r in rows], dtype=torch.long, device=self.device)  # (rows, 1)
        out = self.model(input_ids=input_ids, cache=self._cache, use_cache=True)
        self._cache = out.cache
        self.steps += 1
        tokens = self._sample(out.logits[:, -1], rows)
        keep = [
            i for i, (request, token) in enumerate(zip(rows, tokens, strict=True)) if not self._append(request, token)
        ]
        if len(keep) < len(rows):
            with self._lock:
                self._keep_rows(keep)

    def _sample(self, logits: torch.Tensor, requests: list[GenerationRequest]) -> list[int]:
        """One token per row, each with its request's own temperature, top_k, top_p and generator."""
        logits = logits.float()  # (rows, vocab)
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, r in enumerate(requests) if r.params.temperature > 0]
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            params = [requests[i].params for i in sampled]
            temperature = torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
            probs = torch.softmax(logits.index_select(0, index) / temperature, dim=-1)  # (sampled, vocab)
            # One uniform number per row from the request's own generator: the token a seeded request draws does not
            # depend on what else is in the batch.
            u = torch.stack([torch.rand((), generator=requests[i].generator) for i in sampled]).to(logits.device)
            if all(p.top_p >= 1 and p.top_k == 0 for p in params):
                cdf = probs.cumsum(dim=-1)
                order = None
            else:
                probs, order = probs.sort(dim=-1, descending=True)
                top_p = torch.tensor([p.top_p for p in params], device=logits.device)[:, None]
                drop = (probs.cumsum(dim=-1) - probs) >= top_p  # the most likely token is always kept
                top_k = torch.tensor([p.top_k or probs.shape[1] for p in params], device=logits.device)[:, None]
                drop |= torch.arange(probs.shape[1], device=logits.device)[None, :] >= top_k
                cdf = probs.masked_fill(drop, 0).cumsum(dim=-1)
            position = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[1] - 1)
            picked = position[:, 0] if order is None else order.gather(1, position)[:, 0]
            tokens[index] = picked
        return tokens.tolist()

    def _append(self, request: GenerationRequest, token: int) -> bool:
        """Record a generated token and send its text; returns True when the request is finished."""
        request.output_ids.append(token)
        events = []
        reason = None
        if token in request.params.stop_token_ids:
            reason = "stop"
        else:
            delta, stopped = request.detok.add(token)
            if delta:
                events.append(("delta", delta))
            if stopped:
                reason = "stop"
            elif len(request.output_ids) >= request.params.max_tokens:
                reason = "length"
        if reason is None:
            request.next_token = token
            if events:
                self._deliver(request, events)
            return False
        rest = request.detok.flush()
        if rest:
            events.append(("delta", rest))
        usage = {
            "prompt_tokens": len(request.prompt_ids),
            "completion_tokens": len(request.output_ids),
            "total_tokens": len(request.prompt_ids) + len(request.output_ids),
        }
        request.finished, request.finish_reason = True, reason
        events.append(("finish", reason, usage))
        self._deliver(request, events)
        return True


# ---------------------------------------------------------------------------------------------------------------------
# The HTTP app


def _async_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Callable[[list], None]:
    def sink(events: list) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, events)

    return sink


def create_app(engine: BatchEngine, model_id: str, generation_config=None):
    """The FastAPI app: `/v1/models`, `/v1/chat/completions`, `/v1/completions` (stream or not), `/health`."""
    _require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    tokenizer = engine.tokenizer
    limits = engine.limits
    created = int(time.time())
    if generation_config is None:
        generation_config = getattr(engine.model, "generation_config", None)

    app = FastAPI(title="lstmlm", docs_url=None, redoc_url=None)
    app.state.engine = engine

    def error_response(error: ServingError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    async def read_body(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ServingError(400, f"The request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise ServingError(400, "The request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise ServingError(400, "`model` must be a string naming a served model", param="model")
        if model != model_id:
            raise ServingError(
                404,
                f"The model {model!r} does not exist on this server (it serves {model_id!r})",
                param="model",
                code="model_not_found",
            )
        return body

    @app.get("/v1/models")
    async def list_models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "lstmlm"}],
        }

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name != model_id:
            error = ServingError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
            return error_response(error)
        return {"id": model_id, "object": "model", "created": created, "owned_by": "lstmlm"}

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.stats()}

    async def handle(request: Request, chat: bool):
        try:
            body = await read_body(request)
            parse = parse_chat_request if chat else parse_completion_request
            prompt_ids, params, stream, include_usage = parse(body, tokenizer, generation_config, limits)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            job = GenerationRequest(prompt_ids, params, tokenizer, _async_sink(loop, queue))
            engine.submit(job)
        except ServingError as error:
            return error_response(error)
        prefix = "chatcmpl" if chat else "cmpl"
        response_id = f"{prefix}-{job.id}"
        now = int(time.time())
        if stream:
            return StreamingResponse(
                _stream(job, queue, chat, response_id, now, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(request, job, queue, chat, response_id, now)

    def envelope(chat: bool, response_id: str, now: int, choices: list, usage=None, chunk: bool = False) -> dict:
        if chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        out = {"id": response_id, "object": kind, "created": now, "model": model_id, "choices": choices}
        if usage is not None or not chunk:
            out["usage"] = usage
        return out

    def sse(data: dict) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    async def _stream(job, queue, chat, response_id, now, include_usage):
        try:
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield sse(envelope(chat, response_id, now, [first], chunk=True))
            while True:
                events = await queue.get()
                texts, end = [], None
                for event in events:
                    if event[0] == "delta":
                        texts.append(event[1])
                    else:
                        end = event
                if texts:
                    text = "".join(texts)
                    if chat:
                        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": None, "logprobs": None}
                    yield sse(envelope(chat, response_id, now, [choice], chunk=True))
                if end is None:
                    continue
                if end[0] == "error":
                    error = ServingError(503, end[1], code="aborted")
                    yield sse(error.body())
                    yield "data: [DONE]\n\n"
                    return
                if chat:
                    choice = {"index": 0, "delta": {}, "finish_reason": end[1]}
                else:
                    choice = {"index": 0, "text": "", "finish_reason": end[1], "logprobs": None}
                yield sse(envelope(chat, response_id, now, [choice], chunk=True))
                if include_usage:
                    yield sse(envelope(chat, response_id, now, [], usage=end[2], chunk=True))
                yield "data: [DONE]\n\n"
                return
        finally:
            if not job.finished:  # the client went away (or the stream was cut): free the slot now
                engine.cancel(job)

    async def _complete(request, job, queue, chat, response_id, now):
        text, end = [], None
        loop = asyncio.get_running_loop()
        last_check = loop.time()
        try:
            while end is None:
                try:
                    events = await asyncio.wait_for(queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    events = []
                for event in events:
                    if event[0] == "delta":
                        text.append(event[1])
                    else:
                        end = event
                # Every quarter second, whether events keep coming or not: has the client gone away?
                if end is None and loop.time() - last_check >= 0.25:
                    last_check = loop.time()
                    if await request.is_disconnected():
                        engine.cancel(job)
                        return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
        finally:
            if not job.finished:
                engine.cancel(job)
        if end[0] == "error":
            return error_response(ServingError(503, end[1], code="aborted"))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": end[1]}
        else:
            choice = {"index": 0, "text": "".join(text), "finish_reason": end[1], "logprobs": None}
        return envelope(chat, response_id, now, [choice], usage=end[2])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    return app


# ---------------------------------------------------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmlm serve",
        description="Serve an LSTMLM model with the OpenAI API (/v1/models, /v1/chat/completions, /v1/completions); "
        "all active requests decode together in one batched recurrent step.",
    )
    parser.add_argument("model", help="saved model folder or Hub repo id (with its tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder or repo (default: the model's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: the path)")
    parser.add_argument("--revision", default=None, help="Hub revision of the model")
    parser.add_argument("--trust-remote-code", action="store_true", help="load the model as remote code")
    parser.add_argument("--int8", action="store_true", help="quantize the model to int8 while loading (CPU)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--max-slots", type=int, default=64, help="requests decoding at once (rows of the batch)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting for a slot; beyond: HTTP 429")
    parser.add_argument("--max-prompt-tokens", type=int, default=8192, help="longest prompt accepted, in tokens")
    parser.add_argument("--max-tokens-cap", type=int, default=4096, help="largest max_tokens a request may ask")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    parser.add_argument("--prefill-tokens", type=int, default=2048, help="prompt tokens read per engine iteration")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser


def load_for_serving(args: argparse.Namespace):
    """The model and tokenizer `serve_main` serves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import LSTMLMForCausalLM  # noqa: F401  (registers the Auto classes)

    kwargs = {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
    if args.int8:
        kwargs["quantize"] = "int8"
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer or args.model, revision=None if args.tokenizer else args.revision
    )
    return model.to(args.device).eval(), tokenizer


def serve_main(argv: list[str] | None = None) -> None:
    """`lstmlm serve` / `scripts/serve.py`: load the model and serve it until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    _require_serve_extra()

    for name in ("max_slots", "max_tokens_cap", "max_prompt_tokens", "default_max_tokens", "prefill_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_for_serving(args)
    limits = ServerLimits(
        max_slots=args.max_slots,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens_cap),
    )
    engine = BatchEngine(model, tokenizer, limits, prefill_tokens=args.prefill_tokens).start()
    app = create_app(engine, args.served_model_name or str(args.model))
    run_server(app, engine, args.host, args.port, log_level=args.log_level)


def _make_server(config, engine: BatchEngine):
    """uvicorn's server, with SIGINT/SIGTERM ending every open stream first (so shutdown does not wait on them) and
    the process exiting with status 0 afterwards (uvicorn itself re-raises the signal once it has shut down)."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            engine.shutdown(wait=False)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: do not wait for open connections
            self.should_exit = True

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def run_server(app, engine: BatchEngine, host: str, port: int, log_level: str = "info") -> None:
    """Run `app` with uvicorn until SIGINT/SIGTERM, then stop the engine."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
    server = _make_server(config, engine)
    try:
        server.run()
    finally:
        engine.shutdown()


__all__ = [
    "BatchEngine",
    "GenerationRequest",
    "QueueFullError",
    "SamplingParams",
    "ServerLimits",
    "ServingError",
    "create_app",
    "parse_chat_request",
    "parse_completion_request",
    "serve_main",
]
if __name__ == "__main__":
    serve_main()
