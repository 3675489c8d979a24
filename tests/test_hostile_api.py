"""Hostile input, round two (issue 17): one request must never take the server down or
stall everyone else, and a numeric edge is never a 500.

- Heavy request preparation (chat template, tokenizing, grammar compilation) runs off the
  event loop: while it is held inside its worker thread by a gate, /health answers.
  If it ran on the loop, the loop would be blocked in the gate and /health would time out.
- Cheap checks come first: schemas past the size limit and prompts too long to fit are
  refused before any rendering or tokenizing.
- Tiny temperatures / top_p, out-of-range seeds, lone-surrogate stop strings.
- LangServe inputs refused before a stream starts; /metrics counts statuses as answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest


def error_of(response: httpx.Response, status: int) -> dict:
    """The OpenAI error object of a `status` response (fails if it is anything else)."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


HELLO = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


def _schema(properties: int) -> dict[str, Any]:
    props = {f"p{i}": {"type": "string"} for i in range(properties)}
    return {"type": "object", "properties": props, "required": list(props)}


def _tool(properties: int) -> list[dict[str, Any]]:
    fn = {"name": "big", "description": "many fields", "parameters": _schema(properties)}
    return [{"type": "function", "function": fn}]


def _format(properties: int) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "big", "schema": _schema(properties)}}


class Gate:
    """Wraps a real function: the first call waits (in its thread) until released."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.thread = threading.current_thread().name
        self.entered.set()
        self.release.wait(120)
        return self.real(*args, **kwargs)


@contextmanager
def gated(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> Iterator[Gate]:
    gate = Gate(getattr(module, name))
    monkeypatch.setattr(module, name, gate)
    try:
        yield gate
    finally:
        gate.release.set()
        monkeypatch.undo()


def _health_while_held(server_url: str, path: str, body: dict, gate: Gate) -> tuple:
    """Send `body` to `path`; once its preparation is inside the gate, time /health."""
    with ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(httpx.post, f"{server_url}{path}", json=body, timeout=300)
        assert gate.entered.wait(120), "the request never reached its preparation"
        started = time.monotonic()
        health = httpx.get(f"{server_url}/health", timeout=10)
        latency = time.monotonic() - started
        still_running = not heavy.done()  # provably in progress: held by the gate
        gate.release.set()
        response = heavy.result(timeout=300)
    return health, latency, still_running, response


@pytest.mark.parametrize(
    "case",
    ["tool_schema", "response_format", "legacy_prompt_5mb"],
)
def test_heavy_preparation_leaves_the_event_loop(server_url, monkeypatch, case):
    from model_adapters import local_chat

    gate_name = "encode"
    if case == "tool_schema":  # rendered into the prompt: far past the context -> 400
        body = {"model": "tiny", "messages": HELLO, "tools": _tool(3000), "max_tokens": 2}
        module, path, ok = local_chat, "/v1/chat/completions", {400}
    elif case == "response_format":  # compiled into a grammar and its shortest output
        body = {  # measured: far more than 2 tokens -> 400 naming max_tokens
            "model": "tiny",
            "messages": HELLO,
            "response_format": _format(500),
            "max_tokens": 2,
        }
        module, path, ok = local_chat, "/v1/chat/completions", {400}
        gate_name = "check_constraint"
    else:
        body = {"model": "tiny", "prompt": "lorem ipsum " * (5 * 1024 * 1024 // 12)}
        module, path, ok = local_chat, "/v1/completions", {400}
    with gated(monkeypatch, module, gate_name) as gate:
        health, latency, still_running, response = _health_while_held(server_url, path, body, gate)
    assert health.status_code == 200
    assert still_running
    assert gate.thread.startswith("prepare"), gate.thread  # the bounded worker pool
    assert latency < 1.0, latency
    assert response.status_code in ok, response.text[:300]
    if case == "response_format":
        assert error_of(response, 400)["param"] == "max_tokens"
    elif response.status_code == 400:
        assert error_of(response, 400)["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "field,body",
    [
        ("tools", {"tools": _tool(10_000)}),
        ("response_format", {"response_format": _format(10_000)}),
    ],
)
def test_oversized_schemas_are_refused_before_any_work(http, field, body):
    from chatbot import factory

    stats = factory.get_engine("tiny").runtime.stats
    before = stats.requests
    for stream in (False, True):
        r = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": HELLO, "stream": stream, **body},
        )
        error = error_of(r, 400)
        assert error["param"] == field and "5000 properties" in error["message"]
    assert stats.requests == before
    assert http.get("/health", timeout=5).status_code == 200


def test_a_5mb_legacy_prompt_is_refused_before_tokenizing(http, monkeypatch):
    from model_adapters import local_chat

    calls = []
    tokenizer_call = local_chat.encode

    def counting(tokenizer: Any, text: str, context_length: int | None = None) -> list[int]:
        calls.append(context_length)
        return tokenizer_call(tokenizer, text, context_length)

    monkeypatch.setattr(local_chat, "encode", counting)
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x" * (5 * 1024 * 1024)})
    assert error_of(r, 400)["code"] == "context_length_exceeded"
    assert calls and all(c for c in calls)  # the cheap length estimate was applied


# --- numeric edges -------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1e-39},
        {"temperature": 5e-324},
        {"temperature": 1e-6, "seed": 1},
        {"temperature": 1.0, "top_p": 1e-46},
        {"temperature": 2.0, "top_p": 5e-324},
        {"temperature": 1e-30, "top_p": 1e-30},
        {"temperature": 2.0, "top_p": 1.0, "seed": 2**63 - 1},
        {"temperature": 1.0, "seed": -(2**63)},
    ],
)
def test_tiny_temperatures_and_top_p_never_500(http, params):
    chat = {"model": "tiny", "messages": HELLO, "max_tokens": 4, **params}
    r = http.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text[:300]
    with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert s.status_code == 200 and lines[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in lines), lines[-3:]
    legacy = {"model": "tiny", "prompt": "hi", "max_tokens": 4, **params}
    r = http.post("/v1/completions", json=legacy)
    assert r.status_code == 200, r.text[:300]
    with http.stream("POST", "/v1/completions", json={**legacy, "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)


def test_tiny_temperature_is_greedy(http):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 8}
    greedy = http.post("/v1/chat/completions", json={**body, "temperature": 0}).json()
    tiny = http.post("/v1/chat/completions", json={**body, "temperature": 1e-39}).json()
    assert tiny["choices"][0]["message"] == greedy["choices"][0]["message"]


def test_sampling_guards_numerically():
    import torch

    from model_adapters.generation import sample_next

    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert sample_next(logits, 1e-39, 1.0, g) == 1  # greedy
    assert sample_next(logits, 1.0, 1e-46, g) == 1  # only the top token survives
    masked = torch.tensor([float("-inf"), float("-inf"), 2.0])
    assert sample_next(masked, 0.7, 0.5, g) == 2
    assert sample_next(torch.tensor([float("nan"), 1.0]), 1.0, 1.0, g) in (0, 1)
    huge = torch.tensor([3e38, -3e38, 0.0])
    assert sample_next(huge, 1e-4, 1.0, g) == 0


@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1, 10**30])
def test_seed_out_of_range_is_400_naming_seed(http, seed):
    for path, body in (
        ("/v1/chat/completions", {"model": "tiny", "messages": HELLO}),
        ("/v1/completions", {"model": "tiny", "prompt": "hi"}),
    ):
        error = error_of(http.post(path, json={**body, "seed": seed, "max_tokens": 2}), 400)
        assert error["param"] == "seed", error
        assert "Overflow" not in error["message"]


def test_lone_surrogate_stop_string_is_refused_like_content(http):
    for path, body in (
        (
            "/v1/chat/completions",
            b'{"model": "tiny", "messages": [{"role": "user", '
            b'"content": "hi"}], "stop": ["ok", "\\ud800"]}',
        ),
        ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "stop": "\\udfff"}'),
    ):
        error = error_of(http.post(path, content=body, headers=JSON), 400)
        assert error["param"] == "stop" and "Unicode" in error["message"], error


def test_schema_errors_do_not_quote_native_sources(http):
    bad = {
        "type": "json_schema",
        "json_schema": {
            "name": "x",
            "schema": {"type": "object", "properties": {"a": {"type": "bogus"}}},
        },
    }
    for stream in (False, True):
        r = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": HELLO, "response_format": bad, "stream": stream},
        )
        error = error_of(r, 400)
        assert "bogus" in error["message"]
        assert ".cc:" not in error["message"] and "/project/" not in error["message"], error


# --- LangServe inputs, before the stream ----------------------------------------------


def test_batch_with_a_string_is_422(http):
    from chatbot import factory

    stats = factory.get_engine("tiny").runtime.stats
    before = stats.requests
    r = http.post("/models/tiny/batch", json={"inputs": "hello"})
    assert error_of(r, 422)["param"] == "inputs"
    assert stats.requests == before  # not one request per character
    ok = http.post(
        "/models/tiny/batch", json={"inputs": ["hi", "yo"], "config": {"configurable": {}}}
    )
    assert ok.status_code == 200 and len(ok.json()["output"]) == 2


def test_stream_events_rejects_unknown_versions(http):
    for version in ("v9", "v1", 2):
        r = http.post("/models/tiny/stream_events", json={"input": "hi", "version": version})
        assert error_of(r, 422)["param"] == "version"
    with http.stream(
        "POST", "/models/tiny/stream_events", json={"input": "hi", "version": "v2"}
    ) as r:
        assert r.status_code == 200


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/models/tiny/stream", b'{"input": "a\\ud800b"}'),
        ("/models/tiny/stream_events", b'{"input": [{"type": "human", "content": "\\udfff"}]}'),
        ("/models/tiny/invoke", b'{"input": "\\ud800"}'),
        ("/models/tiny/batch", b'{"inputs": ["ok", "\\ud800"]}'),
        ("/chains/rag/stream", b'{"input": {"kb": "docs", "question": "\\ud800"}}'),
        ("/chains/rag/stream", b'{"input": {"kb": "../etc", "question": "q"}}'),
        ("/chains/rag/stream", b'{"input": {"kb": "no-such-kb", "question": "q"}}'),
        ("/chains/agent/stream", b'{"input": {"kb": "no-such-kb", "input": "q"}}'),
        ("/chains/rag/invoke", b'{"input": {"kb": "no-such-kb", "question": "q"}}'),
    ],
)
def test_langserve_bad_input_is_4xx_before_the_stream(http, path, raw):
    r = http.post(path, content=raw, headers=JSON)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert not r.headers.get("content-type", "").startswith("text/event-stream")
    error_of(r, r.status_code)


# --- /metrics ------------------------------------------------------------------------


def _counts(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("chatbot_http_requests_total{"):
            labels, value = line[len("chatbot_http_requests_total{") :].rsplit("} ", 1)
            parts = dict(p.split("=", 1) for p in labels.split(","))
            key = tuple(parts[k].strip('"') for k in ("method", "route", "status"))
            out[key] = float(value)
    return out


def test_metrics_count_statuses_as_answered_and_label_401_routes(_registry):
    from chatbot.api import create_app
    from chatbot.settings import Settings
    from tests.server_utils import start_server

    key = "sk-hostile-test"
    app = create_app(Settings(api_keys=[key], public_metrics=True), show_progress=False)
    auth = {"authorization": f"Bearer {key}", **JSON}
    deep = ('{"model": "minilm", "input": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    with start_server(app) as url:
        answered: dict[tuple[str, str, str], int] = {}

        def send(path: str, content: bytes, headers: dict) -> None:
            r = httpx.post(f"{url}{path}", content=content, headers=headers, timeout=60)
            key_ = ("POST", path, str(r.status_code))
            answered[key_] = answered.get(key_, 0) + 1

        send("/v1/embeddings", deep, auth)  # RecursionError -> 400
        send("/v1/chat/completions", b"{}", auth)
        send("/v1/chat/completions", json.dumps({"model": "tiny"}).encode(), {})  # 401
        send("/models/tiny/invoke", b'{"input": "hi"}', {"authorization": "Bearer wrong"})
        counts = _counts(httpx.get(f"{url}/metrics").text)
    assert ("POST", "/v1/embeddings", "400") in answered
    assert ("POST", "/v1/chat/completions", "401") in answered
    assert ("POST", "/models/tiny/invoke", "401") in answered
    for labels, n in answered.items():
        assert counts.get(labels) == n, (labels, counts)
    assert not any(status == "500" for _, _, status in counts), counts
    assert not any(route == "unmatched" for _, route, _ in counts), counts
