"""Faults upstream and deadlines: upstream provider errors and router failures map to
4xx passthrough or 502/503/504 (never a bare 500), remote clients always have connect
and read timeouts, the per-request deadline answers 504 for streaming and non-streaming
requests, and the router's per-replica counters are on /metrics."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import chatbot
from chatbot.api import create_app
from chatbot.api.errors import from_exception
from chatbot.errors import AllReplicasFailed, StreamInterrupted
from chatbot.settings import Settings
from tests.openai_schema import validate
from tests.server_utils import start_server
from tests.upstreams import dead_url, registry_with

HELLO = [{"role": "user", "content": "hi"}]


def remote(url: str, **extra) -> dict:
    return {
        "provider": "openai",
        "model": "m",
        "base_url": url,
        "api_key": "sk-up",
        "max_retries": 0,
        **extra,
    }


def routed(urls: list[str]) -> dict:
    return {
        "provider": "openai",
        "model": "m",
        "timeout": 2,
        "max_retries": 0,
        "replicas": [{"base_url": u} for u in urls],
        "router": {"backoff": 0.01},
    }


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    body = r.json()
    validate(body, "ErrorResponse")
    return body["error"]


@pytest.fixture(autouse=True)
def _reset(up):
    up.fault, up.hang_s, up.drop_after = "none", 30.0, 2
    yield
    up.fault = "none"


# --- the mapping, one exception at a time --------------------------------------------


def _status_error(cls: type, status: int, headers: dict | None = None) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx.Response(
        status,
        request=request,
        headers=headers or {},
        json={"error": {"message": f"upstream says {status}"}},
    )
    return cls(
        f"Error code: {status}",
        response=response,
        body={"error": {"message": f"upstream says {status}"}},
    )


@pytest.mark.parametrize(
    "exc,status,code",
    [
        (_status_error(openai.BadRequestError, 400), 400, "upstream_rejected"),
        (_status_error(openai.UnprocessableEntityError, 422), 422, "upstream_rejected"),
        (
            _status_error(openai.RateLimitError, 429, {"retry-after": "7"}),
            429,
            "rate_limit_exceeded",
        ),
        (
            _status_error(openai.AuthenticationError, 401),
            502,
            "upstream_error",
        ),  # our key: not theirs
        (_status_error(openai.NotFoundError, 404), 502, "upstream_error"),
        (_status_error(openai.InternalServerError, 500), 502, "upstream_error"),
        (_status_error(openai.InternalServerError, 503), 503, "upstream_unavailable"),
        (_status_error(openai.APIStatusError, 504), 504, "timeout"),
        (openai.APITimeoutError(httpx.Request("POST", "http://127.0.0.1:9")), 504, "timeout"),
        (
            openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9")),
            502,
            "upstream_error",
        ),
        (httpx.ReadTimeout("slow"), 504, "timeout"),
        (httpx.ConnectError("refused"), 502, "upstream_error"),
        (AllReplicasFailed("m", [("a", TimeoutError("t"))]), 503, "upstream_unavailable"),
        (StreamInterrupted("cut"), 502, "upstream_error"),
        (RecursionError("deep"), 400, "nesting_too_deep"),
    ],
)
def test_upstream_errors_map_to_proper_statuses(exc, status, code):
    api = from_exception(exc)
    assert (api.status, api.code) == (status, code), api.message
    validate(api.body(), "ErrorResponse")
    if status == 429:
        assert api.headers["Retry-After"] == "7"
    if status == 400 and code == "upstream_rejected":
        assert "upstream says 400" in api.message  # the provider's reason is passed on


# --- the same over HTTP, against a real fault-injecting upstream ---------------------


@pytest.mark.parametrize(
    "fault,status",
    [
        ("400", 400),
        ("429", 429),
        ("500", 502),
        ("503", 503),
        ("drop", 502),
    ],
)
def test_upstream_faults_over_http(server_url, up, fault, status):
    up.fault = fault
    with registry_with({"remote": remote(up.url)}):
        for stream in (False, True):
            body = {"model": "remote", "messages": HELLO, "stream": stream}
            r = httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=60)
            error = error_of(r, status)
            if status == 429:
                assert int(r.headers["retry-after"]) >= 1
            assert "sk-up" not in json.dumps(error)


def test_upstream_timeouts(server_url, up):
    with registry_with({"remote": remote(up.url, timeout=1), "plain": remote(up.url)}):
        # Remote clients are always built with a connect and a read timeout.
        for name, read in (("remote", 1.0), ("plain", 120.0)):
            timeout = chatbot.get_chat_model(name).root_async_client.timeout
            assert isinstance(timeout, httpx.Timeout), timeout
            assert timeout.read == read and 0 < timeout.connect <= 10
        up.fault, up.hang_s = "hang", 20
        for stream in (False, True):
            body = {"model": "remote", "messages": HELLO, "stream": stream}
            r = httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=30)
            assert error_of(r, 504)["code"] == "timeout"
    with registry_with({"dead": remote(dead_url(), timeout=1)}):
        r = httpx.post(
            f"{server_url}/v1/chat/completions", json={"model": "dead", "messages": HELLO}
        )
        assert error_of(r, 502)["code"] == "upstream_error"


def test_request_deadline_is_504_streaming_and_not(_registry, up):
    """settings.request_timeout ends the request: 504 when nothing was sent yet (for a
    stream too), an in-band timeout error once a stream has started."""
    up.fault, up.hang_s = "hang", 20
    app = create_app(Settings(api_keys=[], request_timeout=1.0), show_progress=False)
    with registry_with({"slow": remote(up.url, timeout=60)}), start_server(app) as url:
        for stream in (False, True):
            body = {"model": "slow", "messages": HELLO, "stream": stream}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            assert r.elapsed.total_seconds() < 10
            assert error_of(r, 504)["code"] == "timeout"
        up.fault = "none"
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "slow", "messages": HELLO})
        assert r.status_code == 200  # the deadline is per request


# --- the router ----------------------------------------------------------------------


def test_router_failures_over_http_and_replica_metrics(_registry, up):
    app = create_app(Settings(api_keys=[]), show_progress=False)
    dead = dead_url()
    with (
        registry_with(
            {
                "r-dead": routed([dead, dead_url()]),
                "r-ok": routed([dead, up.url]),
                "r-cut": routed([up.url]),
            }
        ),
        start_server(app) as url,
    ):
        for stream in (False, True):
            r = httpx.post(
                f"{url}/v1/chat/completions",
                timeout=30,
                json={"model": "r-dead", "messages": HELLO, "stream": stream},
            )
            assert error_of(r, 503)["code"] == "upstream_unavailable"
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "r-ok", "messages": HELLO})
        assert r.status_code == 200, r.text
        up.fault, up.drop_after = "drop-mid-stream", 2  # after the first token: too late
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=30,
            json={"model": "r-cut", "messages": HELLO, "stream": True},
        )
        assert r.status_code == 200
        events = [e[len("data: ") :] for e in r.text.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        validate(error, "ErrorResponse")
        assert error["error"]["code"] == "upstream_error"
        metrics = httpx.get(f"{url}/metrics").text
    assert f'chatbot_replica_requests_total{{model="r-ok",replica="{up.url}"}}' in metrics
    assert f'chatbot_replica_failures_total{{model="r-dead",replica="{dead}"}}' in metrics
    assert "chatbot_replica_cooldowns_total" in metrics
