"""LangServe routes (/models/{name}) with langserve.RemoteRunnable, and lazy models."""

from __future__ import annotations

import json

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate

from chatbot import factory
from chatbot.api import create_app
from chatbot.registry import parse_registry
from chatbot.settings import Settings
from tests.chains_fakes import data_dir  # noqa: F401 - fixture
from tests.server_utils import start_server


@pytest.fixture(scope="module")
def remote(server_url):
    from langserve import RemoteRunnable

    return RemoteRunnable(f"{server_url}/models/tiny")


def test_invoke_matches_the_openai_api(remote, server_url):
    out = remote.invoke("hi")
    assert isinstance(out, AIMessage)
    assert out.content
    assert out.usage_metadata["output_tokens"] == 16  # the test registry's default
    api = httpx.post(
        f"{server_url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    ).json()
    assert api["choices"][0]["message"]["content"] == out.content


def test_stream_and_batch(remote):
    full = remote.invoke([SystemMessage("be brief"), HumanMessage("hello")])
    chunks = list(remote.stream([SystemMessage("be brief"), HumanMessage("hello")]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.content for c in chunks) == full.content
    outs = remote.batch(["hi", "hello"])
    assert len(outs) == 2 and all(isinstance(o, AIMessage) for o in outs)
    assert outs[0].content == remote.invoke("hi").content


async def test_async_stream_events_and_prompt_values(remote):
    out = await remote.ainvoke("hi")
    chunks = [c async for c in remote.astream("hi")]
    assert "".join(c.content for c in chunks) == out.content
    events = [e async for e in remote.astream_events("hi", version="v2")]
    kinds = {e["event"] for e in events}
    assert "on_chat_model_stream" in kinds
    # A prompt in front of the remote model (a ChatPromptValue goes over the wire).
    chain = ChatPromptTemplate.from_messages([("system", "be brief"), ("human", "{q}")]) | remote
    assert (await chain.ainvoke({"q": "hi"})).content


def test_playground_and_schemas(server_url):
    r = httpx.get(f"{server_url}/models/tiny/playground/", timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower()
    schema = httpx.get(f"{server_url}/models/tiny/input_schema", timeout=30).json()
    assert schema  # a JSON schema the playground renders
    assert httpx.get(f"{server_url}/models/minilm/invoke").status_code == 404  # chat only


def test_lazy_models_load_on_first_use(_registry, monkeypatch, tmp_path):
    registry = factory.get_registry()
    path = registry.entries["tiny"].resolved_path
    body = {"path": str(path), "lazy": True, "defaults": {"temperature": 0, "max_tokens": 4}}
    entry = parse_registry({"models": {"tiny-lazy": body}}, tmp_path).entries["tiny-lazy"]
    monkeypatch.setitem(registry.entries, "tiny-lazy", entry)
    monkeypatch.setattr(registry, "serve", [*registry.serve, "tiny-lazy"])
    factory.unload("tiny-lazy")
    try:
        app = create_app(Settings(api_keys=[], cors_origins=[]), show_progress=False)
        with start_server(app, wait_ready=True) as url:
            ready = httpx.get(f"{url}/ready").json()
            assert ready["models"]["tiny-lazy"] == "lazy"  # ready without it
            card = httpx.get(f"{url}/v1/models/tiny-lazy").json()
            assert card["lazy"] is True and card["loaded"] is False
            assert "tiny-lazy" not in factory.loaded()

            from langserve import RemoteRunnable

            assert RemoteRunnable(f"{url}/models/tiny-lazy").invoke("hi").content
            assert "tiny-lazy" in factory.loaded()
            card = httpx.get(f"{url}/v1/models/tiny-lazy").json()
            assert card["loaded"] is True and card["engine"] == "transformers"
            assert httpx.get(f"{url}/ready").json()["models"]["tiny-lazy"] == "loaded"
    finally:
        factory.unload("tiny-lazy")


def test_a_model_that_fails_to_load_is_a_503_on_streams(models_root, tmp_path, data_dir):  # noqa: F811
    """Streamed LangServe routes (a model's and a chain's) answer a load failure with the
    503 that names the model, as /v1 does: not the 400 of the failure's own ValueError."""
    from chatbot.catalog import ModelCatalog

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no tokenizer: loading raises ValueError
    data = {
        "default_model": "tiny",
        "models": {
            "tiny": {"path": str(models_root / "tiny-qwen2"), "lazy": True},
            "broken": {"path": str(broken), "lazy": True},
        },
    }
    catalog = ModelCatalog(parse_registry(data, models_root))
    app = create_app(Settings(api_keys=[]), show_progress=False, catalog=catalog)
    bodies = {
        "/models/broken/stream": {"input": "hi"},
        "/chains/conversation/stream": {
            "input": {"input": "hi", "session_id": "s", "model": "broken"}
        },
    }
    with start_server(app) as url:
        for path, body in bodies.items():
            response = httpx.post(f"{url}{path}", json=body, timeout=60)
            assert "event: error" in response.text, (path, response.text)
            data_line = response.text.split("event: error", 1)[1].split("data: ", 1)[1]
            error = json.loads(data_line.splitlines()[0])
            assert error["status_code"] == 503, (path, error)
            assert "broken" in error["message"] and "failed to load" in error["message"]
    catalog.close()
