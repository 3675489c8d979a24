"""Chains over HTTP: /chains/{name} LangServe routes and `model: "rag:<kb>"` on /v1."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from chains.conversation import get_history, history_url
from chains.ingest import ingest
from tests.chains_fakes import data_dir  # noqa: F401 - fixture
from tests.server_utils import start_server
from tests.test_chains_kb import write_corpus


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory):
    """The server's own settings: its KBs and histories live in its data_dir, whatever
    the process's settings say (`data_dir` points those elsewhere)."""
    from chatbot.settings import Settings

    data = tmp_path_factory.mktemp("app-data")
    return Settings(api_keys=[], cors_origins=[], data_dir=data)


@pytest.fixture(scope="module")
def base_url(_registry, app_settings):
    from chatbot.api import create_app

    app = create_app(app_settings, show_progress=False)
    with start_server(app, wait_ready=True) as url:
        yield url


@pytest.fixture
def docs(data_dir, tmp_path, app_settings):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    ingest("docs", [corpus], embeddings="minilm", settings=app_settings)
    return "docs"


def test_openai_client_with_rag_model(base_url, docs):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="none")
    reply = client.chat.completions.create(
        model="rag:docs", messages=[{"role": "user", "content": "Which fruit is yellow?"}]
    )
    assert isinstance(reply.choices[0].message.content, str)
    sources = reply.model_extra["sources"]
    assert Path(sources[0]["source"]).name == "fruit.txt"
    assert sources[0]["start_line"] == 1

    stream = client.chat.completions.create(
        model="rag:docs/tiny-llama",
        stream=True,
        messages=[{"role": "user", "content": "the red planet"}],
    )
    chunks = list(stream)
    with_sources = [c for c in chunks if (c.model_extra or {}).get("sources")]
    assert len(with_sources) == 1
    assert Path(with_sources[0].model_extra["sources"][0]["source"]).name == "space.md"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_rag_model_errors(base_url, docs):
    url = f"{base_url}/v1/chat/completions"
    msg = [{"role": "user", "content": "hi"}]
    missing = httpx.post(url, json={"model": "rag:nope", "messages": msg})
    assert missing.status_code == 404
    assert "unknown knowledge base 'nope'" in missing.json()["error"]["message"]
    bad_model = httpx.post(url, json={"model": "rag:docs/no-such-model", "messages": msg})
    assert bad_model.status_code == 404 and bad_model.json()["error"]["param"] == "model"
    no_user = httpx.post(
        url, json={"model": "rag:docs", "messages": [{"role": "system", "content": "x"}]}
    )
    assert no_user.status_code == 400 and "user message" in no_user.json()["error"]["message"]


def test_rag_chain_route(base_url, docs):
    out = httpx.post(
        f"{base_url}/chains/rag/invoke",
        timeout=60,
        json={"input": {"question": "how to bake bread", "kb": "docs", "k": 2}},
    )
    assert out.status_code == 200, out.text
    body = out.json()["output"]
    assert isinstance(body["answer"], str)
    assert Path(body["sources"][0]["source"]).name == "cooking.html"

    with httpx.stream(
        "POST",
        f"{base_url}/chains/rag/stream",
        timeout=60,
        json={"input": {"question": "Which fruit is yellow?", "kb": "docs"}},
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    outputs = [e for e in events if "run_id" not in e]  # the first event is metadata
    assert Path(outputs[0]["sources"][0]["source"]).name == "fruit.txt", events[:3]
    assert "".join(e.get("answer", "") for e in outputs)
    assert playground_ok(base_url, "rag")


def playground_ok(base_url: str, name: str) -> bool:
    page = httpx.get(f"{base_url}/chains/{name}/playground/", follow_redirects=True)
    return page.status_code == 200 and "html" in page.headers["content-type"]


def test_rag_chain_route_unknown_kb(base_url, data_dir):  # noqa: F811
    out = httpx.post(
        f"{base_url}/chains/rag/invoke", json={"input": {"question": "x", "kb": "nope"}}
    )
    assert out.status_code in (400, 404) and "nope" in out.text


def test_conversation_route_persists_history(base_url, data_dir, app_settings):  # noqa: F811
    for text in ("Hello there", "And again"):
        out = httpx.post(
            f"{base_url}/chains/conversation/invoke",
            timeout=60,
            json={"input": {"input": text, "session_id": "web-1"}},
        )
        assert out.status_code == 200, out.text
        assert out.json()["output"]["type"] == "ai"
    history = get_history("web-1", history_url(app_settings)).messages
    assert [m.type for m in history] == ["human", "ai", "human", "ai"]
    assert get_history("web-1").messages == []  # not in the process's data_dir
    assert history[2].text == "And again"


def test_agent_route_and_stream_events(base_url, data_dir):  # noqa: F811
    out = httpx.post(
        f"{base_url}/chains/agent/invoke",
        timeout=60,
        json={"input": {"input": "What is 2 + 2?", "model": "tiny"}},
    )
    assert out.status_code == 200, out.text
    assert set(out.json()["output"]) == {"output", "steps"}
    with httpx.stream(
        "POST",
        f"{base_url}/chains/agent/stream_events",
        timeout=60,
        json={"input": {"input": "hi"}, "version": "v2"},
    ) as r:
        kinds = {
            json.loads(line[6:]).get("event")
            for line in r.iter_lines()
            if line.startswith("data: ") and line[6:].startswith("{")
        }
    assert "on_chat_model_stream" in kinds or "on_chat_model_end" in kinds
    assert playground_ok(base_url, "agent")


def test_remote_runnable_client(base_url, docs, app_settings):
    from langserve import RemoteRunnable

    rag = RemoteRunnable(f"{base_url}/chains/rag")
    out = rag.invoke({"question": "connect to a TCP server", "kb": "docs", "k": 1})
    assert [Path(s["source"]).name for s in out["sources"]] == ["net.py"]
    assert out["sources"][0]["start_line"] == 1 and out["sources"][0]["end_line"] >= 3
    chunks = list(rag.stream({"question": "Which fruit is yellow?", "kb": "docs"}))
    assert Path(chunks[0]["sources"][0]["source"]).name == "fruit.txt"

    chat = RemoteRunnable(f"{base_url}/chains/conversation")
    reply = chat.invoke({"input": "hello", "session_id": "remote"})
    assert reply.type == "ai"
    assert [m.type for m in get_history("remote", history_url(app_settings)).messages] == [
        "human",
        "ai",
    ]


def test_chain_routes_are_documented(base_url):
    spec = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for name in ("rag", "conversation", "agent"):
        for op in ("invoke", "stream", "stream_events", "batch"):
            assert f"/chains/{name}/{op}" in paths
    schema = httpx.get(f"{base_url}/chains/rag/input_schema").json()
    assert {"question", "kb"} <= set(schema["properties"])
