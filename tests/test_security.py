"""Security with API keys on a real server: every route in FastAPI's route table needs a
key (so routes added later are covered without editing this file), keys are compared in
constant time, no key or provider secret reaches the logs, per-key rate limits answer
429, and CORS is off unless configured."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from starlette.routing import Match, Mount, Route, WebSocketRoute

from chatbot.api import create_app, ops, ui
from chatbot.settings import Settings
from tests.server_utils import start_server
from tests.upstreams import Upstream, registry_with

KEYS = ["sk-sec-first-0123456789abcdef", "sk-sec-second-fedcba9876543210"]
WRONG = "sk-sec-wrong-5555555555555555"
PROVIDER_SECRET = "sk-provider-secret-abcdefabcdef1234"
HELLO = [{"role": "user", "content": "hi"}]


def settings(**kwargs) -> Settings:
    return Settings(**{"api_keys": KEYS, "cors_origins": [], **kwargs})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(_registry):
    app = create_app(settings(), show_progress=False)
    with start_server(app, wait_ready=True, headers=bearer(KEYS[0])) as url:
        yield app, url


# --- every route needs a key -----------------------------------------------------------

_PARAM = re.compile(r"{([^}:]+)(:[^}]+)?}")
_SAMPLES = {"file_path": "index.html", "model_id": "tiny", "config_hash": "abc"}


def concrete(path: str) -> str:
    """/models/{model_id:path} -> /models/tiny: a path the route itself matches."""
    return _PARAM.sub(lambda m: _SAMPLES.get(m.group(1), "x"), path)


def walk(routes: list, prefix: str = "") -> list[tuple[str, str, object]]:
    """(method, concrete path, route) for every HTTP route, into mounted apps too."""
    out = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            pytest.fail(f"websocket route {route.path}: add it to this test's auth walk")
        elif isinstance(route, Mount):
            sub = getattr(route.app, "routes", None)
            if sub is None:
                out.append(("GET", prefix + concrete(route.path) + "/", route))
            else:
                out += walk(sub, prefix + concrete(route.path))
        elif isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                out.append((method, prefix + concrete(route.path), route))
    return out


def test_every_route_in_the_route_table_needs_a_key(keyed):
    app, url = keyed
    routes = walk(app.routes)
    paths = {path for _, path, _ in routes}
    # The walk sees the families of routes the issue names (and whatever comes later).
    for expected in (
        "/v1/chat/completions",
        "/models/tiny/invoke",
        "/metrics",
        "/ready",
        "/models/tiny/playground/index.html",
        "/chains/rag/invoke",
        "/openapi.json",
    ):
        assert expected in paths, expected
    assert any(p.startswith("/admin/") for p in paths)
    assert len(routes) > 100
    checked = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for method, path, route in routes:
            if path in ops.PUBLIC_PATHS or path in ui.PUBLIC_PATHS:  # the page's static files
                continue
            if isinstance(route, Route):  # the concrete path really is this route's
                scope = {"type": "http", "path": path, "method": method}
                assert route.matches(scope)[0] == Match.FULL, (method, path)
            for headers in ({}, bearer(WRONG), {"Authorization": f"Basic {KEYS[0]}"}):
                r = http.request(
                    method,
                    path,
                    headers=headers,
                    json={} if method in ("POST", "PUT", "PATCH") else None,
                )
                assert r.status_code == 401, (method, path, headers, r.status_code)
                if method != "HEAD":
                    error = r.json()["error"]
                    assert error["code"] == "invalid_api_key"
                    assert set(error) == {"message", "type", "param", "code"}
                assert r.headers["www-authenticate"] == "Bearer"
                checked += 1
        assert checked >= 3 * 100
        assert http.get("/health").status_code == 200  # liveness stays open
        # With a key the same routes answer (one per family, to keep it quick).
        for path in ("/ready", "/metrics", "/v1/models", "/models/tiny/playground/index.html"):
            assert http.get(path, headers=bearer(KEYS[1])).status_code == 200, path


def test_metrics_public_only_when_configured(_registry):
    with start_server(create_app(settings(public_metrics=True), show_progress=False)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/ready").status_code == 401


def test_keys_are_compared_in_constant_time_against_every_key(keyed, monkeypatch):
    """Every configured key is compared with hmac.compare_digest, whichever matches, so
    the time taken says nothing about which key (or how much of one) was right."""
    _, url = keyed
    calls: list[tuple[bytes, bytes]] = []
    real = ops.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ops.hmac, "compare_digest", spy)
    for key in (WRONG, KEYS[0], KEYS[1], KEYS[0][:-1]):
        calls.clear()
        httpx.get(f"{url}/v1/models", headers=bearer(key))
        assert sorted(b for _, b in calls) == sorted(k.encode() for k in KEYS), key


# --- secrets never in logs -------------------------------------------------------------


def test_keys_and_provider_secrets_never_reach_the_logs(keyed, caplog):
    _, url = keyed
    caplog.set_level(logging.DEBUG)
    with (
        Upstream("sec").start() as up,
        registry_with(
            {
                "remote": {
                    "provider": "openai",
                    "model": "m",
                    "base_url": up.url,
                    "api_key": PROVIDER_SECRET,
                    "timeout": 5,
                    "max_retries": 0,
                }
            }
        ),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        body = {"model": "remote", "messages": HELLO, "max_tokens": 3}
        for fault in ("none", "400", "429", "500", "503"):
            up.fault = fault
            for stream in (False, True):
                r = http.post(
                    "/v1/chat/completions", json={**body, "stream": stream}, headers=bearer(KEYS[0])
                )
                assert r.status_code < 500 or fault in ("500", "503"), (fault, r.text)
                assert PROVIDER_SECRET not in r.text
        # The secret was really used (so its absence from the logs means something).
        assert up.chat_requests()[0]["headers"]["authorization"] == f"Bearer {PROVIDER_SECRET}"
        for headers in ({}, bearer(WRONG), bearer(KEYS[1]), {"Authorization": KEYS[0]}):
            http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": HELLO, "max_tokens": 2},
                headers=headers,
            )
    logged = caplog.text + "\n".join(repr(rec.__dict__) for rec in caplog.records)
    assert "chatbot.access" in logged  # logs were captured at all
    for secret in (*KEYS, WRONG, PROVIDER_SECRET):
        assert secret not in logged, secret
    assert "bearer sk-" not in logged.lower()  # no Authorization header dumped


# --- rate limits ---------------------------------------------------------------------


def test_requests_per_minute_per_key(_registry):
    with start_server(create_app(settings(rate_limit_rpm=3), show_progress=False)) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(3):
                assert http.get("/v1/models", headers=bearer(KEYS[0])).status_code == 200
            r = http.get("/v1/models", headers=bearer(KEYS[0]))
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            # Per key: the other key still has its budget; no key is still a 401.
            assert http.get("/v1/models", headers=bearer(KEYS[1])).status_code == 200
            assert http.get("/v1/models").status_code == 401
            assert http.get("/health").status_code == 200  # never limited


def test_tokens_per_minute_per_key(_registry):
    with start_server(create_app(settings(rate_limit_tpm=40), show_progress=False)) as url:
        body = {
            "model": "tiny",
            "messages": HELLO,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post("/v1/chat/completions", json=body, headers=bearer(KEYS[0]))
            assert r.status_code == 200
            assert '"total_tokens"' in r.text
            first = http.post("/v1/chat/completions", json=body, headers=bearer(KEYS[0]))
            second = http.post("/v1/chat/completions", json=body, headers=bearer(KEYS[0]))
            # The first answer's tokens (prompt + 16) overdraw a 40/min bucket within two.
            limited = [x for x in (first, second) if x.status_code == 429]
            assert limited, (first.status_code, second.status_code)
            assert int(limited[0].headers["retry-after"]) >= 1
            assert (
                http.post("/v1/chat/completions", json=body, headers=bearer(KEYS[1])).status_code
                == 200
            )


def test_without_keys_the_limit_is_per_address_not_per_header(_registry):
    app = create_app(Settings(api_keys=[], rate_limit_rpm=2), show_progress=False)
    with start_server(app) as url:
        codes = [
            httpx.get(f"{url}/v1/models", headers=bearer(f"made-up-{i}")).status_code
            for i in range(3)
        ]  # a fresh made-up key each time buys nothing
    assert codes == [200, 200, 429]


def test_no_rate_limits_by_default():
    s = Settings(api_keys=[])
    assert s.rate_limit_rpm is None and s.rate_limit_tpm is None


# --- CORS ----------------------------------------------------------------------------


def test_cors_off_by_default_on_when_configured(keyed, _registry):
    _, url = keyed
    assert Settings().cors_origins == []
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{url}/v1/models", headers={"Origin": "https://app.example", **bearer(KEYS[0])})
    assert "access-control-allow-origin" not in r.headers
    app = create_app(settings(cors_origins=["https://app.example"]), show_progress=False)
    with start_server(app) as cors_url:
        r = httpx.options(f"{cors_url}/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = {**preflight, "Origin": "https://evil.example"}
        r = httpx.options(f"{cors_url}/v1/chat/completions", headers=other)
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
