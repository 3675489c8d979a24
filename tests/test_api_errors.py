"""Every error case of the API: status code and OpenAI error body, on a real server."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from chatbot import factory
from chatbot.registry import parse_registry
from tests.openai_schema import validate

HELLO = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate(body, "ErrorResponse")
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --- 404 ---------------------------------------------------------------------------


def test_unknown_model_is_404_everywhere(http):
    for path, body in [
        ("/v1/chat/completions", {"model": "nope", "messages": HELLO}),
        ("/v1/chat/completions", {"model": "nope", "messages": HELLO, "stream": True}),
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
        ("/v1/embeddings", {"model": "nope", "input": "x"}),
        ("/v1/embeddings", {"model": "tiny", "input": "x"}),  # a chat model is no embedder
        ("/v1/chat/completions", {"model": "minilm", "messages": HELLO}),
    ]:
        error = assert_error(http.post(path, json=body), 404, "model", "model_not_found")
        assert body["model"] in error["message"]
    assert_error(http.get("/v1/models/nope"), 404, code="model_not_found")


def test_entries_not_in_serve_are_not_served(http, monkeypatch):
    registry = factory.get_registry()
    monkeypatch.setattr(registry, "serve", [n for n in registry.serve if n != "tiny-plain"])
    assert_error(
        http.post("/v1/chat/completions", json={"model": "tiny-plain", "messages": HELLO}),
        404,
        code="model_not_found",
    )
    assert_error(http.get("/v1/models/tiny-plain"), 404)
    assert "tiny-plain" not in [m["id"] for m in http.get("/v1/models").json()["data"]]


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing-here"), 404, code="not_found")
    assert_error(http.get("/v1/chat/completions"), 405, code="method_not_allowed")


# --- 400: bad fields name the field ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "tiny"}, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "temperature": 3},
            "temperature",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "max_tokens": 0},
            "max_tokens",
        ),
        ("/v1/chat/completions", {"model": "tiny", "messages": HELLO, "top_p": 0}, "top_p"),
        ("/v1/chat/completions", {"model": "tiny", "messages": HELLO, "n": 0}, "n"),
        ("/v1/chat/completions", {"model": "tiny", "messages": HELLO, "stop": 5}, "stop"),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"content": "x"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": 7}]},
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [HELLO[0], {"role": "narrator", "content": "x"}]},
            "messages[1].role",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "logprobs": True},
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "tool_choice": "required"},
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": HELLO, "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
        ("/v1/completions", {"model": "tiny"}, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": [99999999]}, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "suffix": "y"}, "suffix"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 2}, "logprobs"),
        ("/v1/embeddings", {"model": "minilm", "input": []}, "input"),
        ("/v1/embeddings", {"model": "minilm", "input": [1, 2, 3]}, "input"),
        (
            "/v1/embeddings",
            {"model": "minilm", "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        ("/v1/embeddings", {"model": "minilm", "input": "x", "dimensions": 3}, "dimensions"),
    ],
)
def test_bad_fields_are_400_naming_the_field(http, path, body, param):
    error = assert_error(http.post(path, json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_invalid_json_and_wrong_body_types_are_400(http):
    headers = {"content-type": "application/json"}
    for raw in (b"{not json", b"", b"[1, 2]", b'"text"', b"null"):
        r = http.post("/v1/chat/completions", content=raw, headers=headers)
        assert_error(r, 400)


def test_no_bad_input_ever_gets_a_500(http):
    bodies = [
        {"model": 5, "messages": HELLO},
        {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"model": "tiny", "messages": [{"role": "user", "content": [5]}]},
        {"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
        {
            "model": "tiny",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
        },
        {"model": "tiny", "messages": HELLO, "stream_options": "yes"},
        {"model": "tiny", "messages": HELLO, "tools": [{"type": "function"}]},
        {"model": "tiny", "messages": HELLO, "seed": "x"},
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "x" * 10}],
            "max_tokens": 10**12,
        },
    ]
    for body in bodies:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            assert_error(r, r.status_code)
    # The server is still fine.
    assert (
        http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO}).status_code
        == 200
    )


# --- context length, overload, load failure ----------------------------------------


def test_prompt_longer_than_context_is_400(http):
    long = "hello " * 3000  # the tiny models have a 1024-token context
    for stream in (False, True):
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": long}],
                "stream": stream,
            },
        )
        error = assert_error(r, 400, code="context_length_exceeded")
        assert "1024" in error["message"]
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": long})
    assert_error(r, 400, code="context_length_exceeded")


@pytest.fixture
def small_queue_model(monkeypatch, tmp_path):
    """A copy of the tiny model with room for one running and one waiting request."""
    registry = factory.get_registry()
    path = registry.entries["tiny"].resolved_path
    body = {"path": str(path), "max_batch_size": 1, "max_queue": 1, "defaults": {"temperature": 0}}
    entry = parse_registry({"models": {"tiny-q": body}}, tmp_path).entries["tiny-q"]
    monkeypatch.setitem(registry.entries, "tiny-q", entry)
    monkeypatch.setattr(registry, "serve", [*registry.serve, "tiny-q"])
    yield "tiny-q"
    factory.unload("tiny-q")


def test_queue_full_is_429_with_retry_after(server_url, http, small_queue_model):
    long = {"model": small_queue_model, "messages": HELLO, "max_tokens": 1024, "stream": True}
    stop = threading.Event()
    opened: list[int] = []

    def hold_one() -> None:  # a long stream, kept open until told to stop
        with httpx.Client(base_url=server_url, timeout=120) as c:
            with c.stream("POST", "/v1/chat/completions", json=long) as r:
                opened.append(r.status_code)
                for _ in r.iter_lines():
                    if stop.is_set():
                        break

    holders = [threading.Thread(target=hold_one) for _ in range(2)]
    try:
        holders[0].start()
        deadline = time.monotonic() + 60
        while not opened and time.monotonic() < deadline:  # one running...
            time.sleep(0.05)
        holders[1].start()  # ...and one waiting: the queue is full
        gauge = f'chatbot_model_requests_in_flight{{model="{small_queue_model}"}} 2.0'
        while gauge not in http.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # from "in flight" to "submitted to the engine"
        for path, body in [
            ("/v1/chat/completions", {"model": small_queue_model, "messages": HELLO}),
            (
                "/v1/chat/completions",
                {"model": small_queue_model, "messages": HELLO, "stream": True},
            ),
            ("/v1/completions", {"model": small_queue_model, "prompt": "hi"}),
        ]:
            r = http.post(path, json=body)
            assert_error(r, 429, code="rate_limit_exceeded")
            assert int(r.headers["retry-after"]) >= 1
    finally:
        stop.set()
        for t in holders:
            t.join(timeout=60)
    assert opened[0] == 200
    # Room again once the streams are gone (their generations were cancelled).
    ok = http.post(
        "/v1/chat/completions",
        json={"model": small_queue_model, "messages": HELLO, "max_tokens": 2},
    )
    assert ok.status_code == 200, ok.text


def test_a_model_that_fails_to_load_is_503_and_the_server_goes_on(http, monkeypatch, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    registry = factory.get_registry()
    entry = parse_registry({"models": {"broken": {"path": str(broken)}}}, tmp_path).entries[
        "broken"
    ]
    monkeypatch.setitem(registry.entries, "broken", entry)
    monkeypatch.setattr(registry, "serve", [*registry.serve, "broken"])

    for stream in (False, True):
        r = http.post(
            "/v1/chat/completions", json={"model": "broken", "messages": HELLO, "stream": stream}
        )
        error = assert_error(r, 503, code="model_unavailable")
        assert "broken" in error["message"]
    assert http.get("/health").status_code == 200
    ok = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO})
    assert ok.status_code == 200
    assert "broken" not in factory.loaded()


def test_langserve_bad_input_is_not_500(http):
    r = http.post("/models/tiny/invoke", json={"input": {"not": "messages"}})
    assert 400 <= r.status_code < 500, r.text
    r = http.post(
        "/models/tiny/invoke", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500, r.text
