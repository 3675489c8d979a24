"""Admin API of the model pool: list, load, unload, behind the API key."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from chatbot import factory
from chatbot.api import create_app
from chatbot.factory import default_catalog
from chatbot.settings import Settings
from tests.extra_models import extra_models
from tests.server_utils import start_server

pool = default_catalog().pool

KEY = "admin-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODELS = {"admin-a": {"path": "tiny-qwen2", "lazy": True, "defaults": {"max_tokens": 8}}}


@pytest.fixture(scope="module")
def url(_registry, models_root):
    with extra_models(MODELS, models_root):
        app = create_app(Settings(api_keys=[KEY], cors_origins=[]), show_progress=False)
        with start_server(app) as base:
            yield base


def models(url: str) -> dict[str, dict]:
    r = httpx.get(f"{url}/admin/models", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["data"]}


def test_admin_needs_the_key(url) -> None:
    assert httpx.get(f"{url}/admin/models", timeout=30).status_code == 401
    r = httpx.post(f"{url}/admin/models/admin-a/load", headers={"Authorization": "Bearer no"})
    assert r.status_code == 401
    assert "admin-a" not in factory.loaded()


def test_load_list_unload(url) -> None:
    assert models(url)["admin-a"]["state"] == "unloaded"
    r = httpx.post(f"{url}/admin/models/admin-a/load", headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "loaded" and body["engine"] == "transformers"
    assert body["memory_bytes"] > 100_000 and body["device"] == "cpu"
    listed = models(url)["admin-a"]
    assert listed["state"] == "loaded" and listed["last_used"] <= time.time()
    usage = httpx.get(f"{url}/admin/models", headers=AUTH).json()["memory"]
    assert usage["cpu"]["used"] >= body["memory_bytes"]

    r = httpx.post(f"{url}/admin/models/admin-a/unload", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["unloaded"] is True
    assert r.json()["state"] == "unloaded" and "admin-a" not in factory.loaded()
    assert models(url)["admin-a"]["memory_bytes"] == 0


def test_last_use_moves_with_requests(url) -> None:
    httpx.post(f"{url}/admin/models/admin-a/load", headers=AUTH, timeout=120)
    first = models(url)["admin-a"]["last_used"]
    time.sleep(0.05)
    chat = {"model": "admin-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert models(url)["admin-a"]["last_used"] > first


def test_unload_waits_for_a_streaming_request(url) -> None:
    httpx.post(f"{url}/admin/models/admin-a/load", headers=AUTH, timeout=120)
    chat = {
        "model": "admin-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 200,
        "stream": True,
    }
    lines: list[str] = []
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=chat, headers=AUTH, timeout=60
    ) as r:
        it = r.iter_lines()
        lines.append(next(it))
        result: dict = {}
        t = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(f"{url}/admin/models/admin-a/unload", headers=AUTH, timeout=60)
            )
        )
        t.start()
        lines.extend(it)
    t.join(60)
    assert result["r"].status_code == 200
    assert lines[-1] == "data: [DONE]" or any("[DONE]" in line for line in lines[-3:])
    assert not any('"error"' in line for line in lines)
    assert pool.state("admin-a") == "unloaded"


def test_unknown_model_is_404(url) -> None:
    r = httpx.post(f"{url}/admin/models/nope/load", headers=AUTH, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
