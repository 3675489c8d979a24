"""Operations on real servers: health/ready, request ids, metrics, API keys (and that
they never reach the logs), CORS, the body size limit, the request deadline, and a
client disconnect cancelling its generation."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from chatbot import factory
from chatbot.api import create_app
from chatbot.settings import Settings
from tests.gates import HeldSteps
from tests.openai_schema import validate
from tests.server_utils import start_server

HELLO = [{"role": "user", "content": "hi"}]
KEYS = ["sk-test-alpha-0123456789", "sk-test-beta-9876543210"]


def settings(**kwargs) -> Settings:
    return Settings(**{"api_keys": [], "cors_origins": [], **kwargs})


def serve(**kwargs):
    return start_server(create_app(settings(**kwargs), show_progress=False))


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- health, ready, request ids, metrics -------------------------------------------


def test_health_and_ready(server_url):
    assert httpx.get(f"{server_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server_url}/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["models"]["tiny"] == "loaded"
    assert body["models"]["minilm"] == "loaded"


def test_request_ids(server_url, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.access")
    r = httpx.get(f"{server_url}/v1/models")
    generated = r.headers["x-request-id"]
    assert len(generated) == 32
    r = httpx.get(f"{server_url}/v1/models", headers={"x-request-id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    unsafe = "bad id <script>" + "x" * 80
    r = httpx.get(f"{server_url}/v1/models", headers={"x-request-id": unsafe})
    assert r.headers["x-request-id"] != unsafe
    wait_until(lambda: any(getattr(x, "request_id", None) == "trace-42" for x in caplog.records), 5)
    access = [x for x in caplog.records if x.name == "chatbot.access"]
    ids = {x.request_id for x in access}
    assert {"trace-42", generated} <= ids
    line = next(x for x in access if x.request_id == "trace-42").getMessage()
    assert "GET /v1/models -> 200" in line


def test_metrics(server_url):
    http = httpx.Client(base_url=server_url, timeout=60)
    http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 3})
    r = http.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": HELLO, "max_tokens": 3, "stream": True},
    )
    assert r.status_code == 200
    http.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
    text = http.get("/metrics").text
    assert 'chatbot_model_requests_total{endpoint="chat",model="tiny",outcome="ok"}' in text
    assert 'chatbot_prompt_tokens_total{model="tiny"}' in text
    assert 'chatbot_completion_tokens_total{model="tiny"}' in text
    assert 'chatbot_time_to_first_token_seconds_count{model="tiny"}' in text
    assert 'chatbot_model_request_duration_seconds_bucket{endpoint="chat"' in text
    assert 'chatbot_prompt_tokens_total{model="minilm"}' in text
    assert (
        'chatbot_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
        in text
    )
    assert 'chatbot_model_loaded{model="tiny"} 1.0' in text
    assert 'chatbot_model_requests_in_flight{model="tiny"} 0.0' in text


# --- API keys ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_url(_registry):
    with serve(api_keys=KEYS) as url:
        yield url


PROTECTED = [
    ("GET", "/ready", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny", None),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"model": "minilm", "input": "hi"}),
    ("POST", "/models/tiny/invoke", {"input": "hi"}),
    ("POST", "/models/tiny/stream", {"input": "hi"}),
    ("GET", "/models/tiny/playground/", None),
    ("GET", "/models/tiny/input_schema", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/no/such/route", None),
]


def test_every_route_but_health_needs_a_key(auth_url, caplog):
    caplog.set_level(logging.DEBUG)
    http = httpx.Client(base_url=auth_url, timeout=60)
    assert http.get("/health").status_code == 200
    wrong = {"Authorization": "Bearer sk-wrong-key-5555555555"}
    for method, path, body in PROTECTED:
        for headers in ({}, wrong, {"Authorization": f"Basic {KEYS[0]}"}):
            r = http.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            for key in (*KEYS, "sk-wrong-key-5555555555"):
                assert key not in r.text
        for key in KEYS:
            r = http.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code != 401, (path, r.text)
            expected = 404 if path == "/no/such/route" else 200
            assert r.status_code == expected, (path, r.text)
    # Keys, right or wrong, never reach the server's logs.
    server_side = [
        rec for rec in caplog.records if not rec.name.startswith(("httpx", "httpcore", "openai"))
    ]
    assert any(rec.name == "chatbot.access" for rec in server_side)
    logged = "\n".join(rec.getMessage() + repr(rec.__dict__) for rec in server_side)
    for key in (*KEYS, "sk-wrong-key-5555555555"):
        assert key not in logged
        assert key not in caplog.text


def test_clients_with_a_key(auth_url):
    from langchain_openai import ChatOpenAI
    from langserve import RemoteRunnable
    from openai import AuthenticationError, OpenAI

    client = OpenAI(base_url=f"{auth_url}/v1", api_key=KEYS[1], max_retries=0)
    assert client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).choices
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{auth_url}/v1", api_key="nope", max_retries=0).models.list()
    llm = ChatOpenAI(model="tiny", base_url=f"{auth_url}/v1", api_key=KEYS[0], max_tokens=2)
    assert llm.invoke("hi").content
    remote = RemoteRunnable(
        f"{auth_url}/models/tiny", headers={"Authorization": f"Bearer {KEYS[0]}"}
    )
    assert remote.invoke("hi").content
    with pytest.raises(httpx.HTTPStatusError) as info:
        RemoteRunnable(f"{auth_url}/models/tiny").invoke("hi")
    assert info.value.response.status_code == 401


def test_public_metrics(_registry):
    with serve(api_keys=KEYS, public_metrics=True) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401


def test_api_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv("CHATBOT_API_KEYS", "k1, k2 ,")
    keys = [k.get_secret_value() for k in Settings().api_keys]
    assert keys == ["k1", "k2"]
    assert "k1" not in repr(Settings())


# --- CORS, body limit -----------------------------------------------------------------


def test_cors_off_by_default_and_configurable(server_url, _registry):
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    r = httpx.options(f"{server_url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    with serve(cors_origins=["https://app.example"], api_keys=KEYS) as url:
        r = httpx.options(f"{url}/v1/chat/completions", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.get(
            f"{url}/v1/models",
            headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEYS[0]}"},
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.options(
            f"{url}/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


def test_body_size_limit_is_413(_registry):
    with serve(max_request_bytes=2048) as url:
        big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 4000}]}
        r = httpx.post(f"{url}/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'

        r = httpx.post(
            f"{url}/v1/chat/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        small = {"model": "tiny", "messages": HELLO, "max_tokens": 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=small).status_code == 200


# --- deadline, disconnect ------------------------------------------------------------


def _stats():
    return factory.get_engine("tiny").runtime.stats


def test_request_deadline_ends_a_stream_with_an_error_event(_registry):
    runtime = factory.get_engine("tiny").runtime
    with serve(request_timeout=1.0) as url:
        stats = _stats()
        cancelled = stats.cancelled
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 1024, "stream": True}
        with HeldSteps(runtime, steps=8):  # held until the response has ended
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200
        events = [b[len("data: ") :] for b in r.text.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        validate(error, "ErrorResponse")
        assert error["error"]["code"] == "timeout"
        assert len(events) > 3  # some tokens came first
        # The abandoned generation was cancelled, not left running.
        assert wait_until(lambda: stats.cancelled > cancelled, 30)

        with HeldSteps(runtime, steps=0):
            r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "timeout"


def test_client_disconnect_cancels_generation(server_url):
    stats = _stats()
    cancelled, generated = stats.cancelled, stats.generated_tokens
    max_tokens = 1000
    body = {"model": "tiny", "messages": HELLO, "max_tokens": max_tokens, "stream": True}
    with httpx.Client(base_url=server_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 4:
                    break  # hang up mid-stream
    assert wait_until(lambda: stats.cancelled > cancelled, 30), "generation was not cancelled"
    made = stats.generated_tokens - generated
    time.sleep(0.5)
    assert stats.generated_tokens - generated == made  # and it stays stopped
    assert made < max_tokens
    text = httpx.get(f"{server_url}/metrics").text
    assert 'chatbot_model_requests_total{endpoint="chat",model="tiny",outcome="cancelled"}' in text
