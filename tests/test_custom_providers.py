"""Custom providers (`provider: module:Class` or a `chatbot.providers` entry point), through
the registry and factory, against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import chatbot
from chatbot.engines import engine_class, known_engines
from chatbot.registry import RegistryError
from model_adapters.custom_provider import ChatCustom, CustomProvider, Reply
from model_adapters.examples.http_provider import HTTPChatProvider
from tests.upstreams import Upstream, dead_url, fake_vector, registry_with

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the project supports 3.10)

SECRET = "sk-test-not-a-real-key-1234"
ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _clean(up: Upstream):
    up.fault, up.requests[:] = "none", []
    yield


HTTP_PROVIDER = "model_adapters.examples.http_provider:HTTPChatProvider"


class EchoProvider(CustomProvider):
    """A sync provider that streams word by word and embeds by length (no usage)."""

    def chat(self, messages, params):
        words = f"echo {self.config.model}: {messages[-1]['content']}".split()
        for i, word in enumerate(words[: params.get("max_tokens")]):
            yield word if i == 0 else " " + word

    def embed(self, texts):
        return [[float(len(t)), 1.0] for t in texts]


def test_custom_provider_by_dotted_path_over_http(up: Upstream, monkeypatch) -> None:
    monkeypatch.setenv("UP_KEY", SECRET)
    entry = {
        "provider": HTTP_PROVIDER,
        "model": "remote",
        "base_url": up.url,
        "api_key": "${UP_KEY}",
        "headers": {"X-Team": "red"},
        "defaults": {"max_tokens": 3},
        "params": {"top_k": 5},
    }
    with registry_with({"custom-http": entry}):
        model = chatbot.get_chat_model("custom-http")
        assert isinstance(model, ChatCustom)
        reply = model.invoke("hello there")
        assert reply.content == "up says: hello"
        assert reply.usage_metadata == {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
        chunks = list(model.stream("a b"))
        assert [c.content for c in chunks if c.content] == ["up", " says:", " a"]
        assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == 3
    body, headers = up.chat_requests()[0]["body"], up.chat_requests()[0]["headers"]
    assert body["max_tokens"] == 3 and body["top_k"] == 5 and body["model"] == "remote"
    assert headers["authorization"] == f"Bearer {SECRET}" and headers["x-team"] == "red"
    assert up.chat_requests()[1]["body"]["stream"] is True


async def test_custom_provider_async_and_errors(up: Upstream) -> None:
    entry = {"provider": HTTP_PROVIDER, "model": "remote", "base_url": up.url}
    with registry_with({"custom-http": entry}):
        model = chatbot.get_chat_model("custom-http")
        assert (await model.ainvoke("hi")).content == "up says: hi"
        text = "".join([c.content async for c in model.astream("x y")])
        assert text == "up says: x y"
        up.fault = "400"
        with pytest.raises(httpx.HTTPStatusError, match="injected 400"):
            await model.ainvoke("hi")


def _install_entry_point(tmp_path, monkeypatch, name: str, target: str) -> None:
    """A minimal installed distribution declaring one `chatbot.providers` entry point."""
    dist = tmp_path / "chatbot_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: chatbot-test-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(f"[chatbot.providers]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_custom_provider_by_entry_point(tmp_path, monkeypatch) -> None:
    _install_entry_point(
        tmp_path, monkeypatch, "echo-test", "tests.test_custom_providers:EchoProvider"
    )
    assert "echo-test" in known_engines()
    with registry_with(
        {"echo": {"provider": "echo-test", "model": "e1"}},
        embeddings={"echo-emb": {"provider": "echo-test", "model": "e1"}},
    ):
        model = chatbot.get_chat_model("echo", max_tokens=3)
        assert model.invoke("one two").content == "echo e1: one"
        chunks = [c.content async for c in model.astream("one two") if c.content]
        assert chunks == ["echo", " e1:", " one"]
        assert (await model.abatch(["a", "b"]))[1].content == "echo e1: b"
        emb = chatbot.get_embeddings("echo-emb")
        assert emb.embed_documents(["abc"]) == [[3.0, 1.0]]
        assert await emb.aembed_query("ab") == [2.0, 1.0]


def test_shipped_example_is_declared_as_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = project["project"]["entry-points"]["chatbot.providers"]["openai-http"]
    assert engine_class(declared).provider_cls is HTTPChatProvider


def test_custom_provider_embeddings_over_http(up: Upstream) -> None:
    entry = {"provider": HTTP_PROVIDER, "model": "emb", "base_url": up.url}
    with registry_with(embeddings={"custom-emb": entry}):
        assert chatbot.get_embeddings("custom-emb").embed_query("z") == pytest.approx(
            fake_vector("z")
        )


def test_router_over_custom_provider_replicas(up: Upstream) -> None:
    entry = {
        "provider": HTTP_PROVIDER,
        "model": "m",
        "router": {"backoff": 0.01},
        "replicas": [{"base_url": dead_url()}, {"base_url": up.url}],
    }
    with registry_with({"custom-routed": entry}):
        model = chatbot.get_chat_model("custom-routed")
        assert [model.invoke("q").content for _ in range(3)] == ["up says: q"] * 3
        assert "".join(c.content for c in model.stream("s")) == "up says: s"


def test_bad_custom_provider_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match=r"models\.bad\.provider.*not a chatbot"):
        with registry_with({"bad": {"provider": "tests.upstreams:Upstream", "model": "m"}}):
            pass
    with pytest.raises(RegistryError, match=r"models\.bad\.provider.*cannot import"):
        with registry_with({"bad": {"provider": "no_such_pkg.mod:Thing", "model": "m"}}):
            pass
    with pytest.raises(RegistryError, match="cannot serve embeddings"):
        with registry_with(
            embeddings={"bad": {"provider": "tests.test_custom_providers:ChatOnly", "model": "m"}}
        ):
            pass


class AsyncOnly(CustomProvider):
    async def achat(self, messages, params):
        for piece in ("async ", messages[-1]["content"]):
            await asyncio.sleep(0)
            yield piece
        yield Reply(input_tokens=1, output_tokens=2, finish_reason="length")


async def test_async_only_custom_provider() -> None:
    with registry_with(
        {"async-only": {"provider": "tests.test_custom_providers:AsyncOnly", "model": "a"}}
    ):
        model = chatbot.get_chat_model("async-only")
        reply = await model.ainvoke("hi")
        assert reply.content == "async hi"
        assert reply.usage_metadata["total_tokens"] == 3
        assert reply.response_metadata["finish_reason"] == "length"
        assert [c.content async for c in model.astream("x") if c.content] == ["async ", "x"]
        with pytest.raises(NotImplementedError, match="AsyncOnly implements only async"):
            model.invoke("hi")


class ChatOnly(CustomProvider):
    def chat(self, messages, params):
        return "x"
