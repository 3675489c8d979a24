"""`provider: openai` and custom providers, through the registry and factory, against real
OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pytest
import yaml
from langchain_core.messages import AIMessage

import chatbot
from chatbot.engines import engine_class, known_engines
from chatbot.registry import RegistryError
from model_adapters.custom_provider import ChatCustom, CustomProvider, Reply
from model_adapters.examples.http_provider import HTTPChatProvider
from tests.upstreams import Upstream, dead_url, fake_vector, registry_with

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the project supports 3.10)

SECRET = "sk-test-not-a-real-key-1234"


@pytest.fixture(scope="module")
def up():
    with Upstream("up") as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(up: Upstream):
    up.fault, up.requests[:] = "none", []
    yield


def test_openai_entry_chat_stream_usage_and_headers(up: Upstream, monkeypatch) -> None:
    monkeypatch.setenv("UP_KEY", SECRET)
    entry = {
        "provider": "openai",
        "model": "remote-model",
        "base_url": up.url,
        "api_key": "${UP_KEY}",
        "organization": "org-42",
        "headers": {"X-Team": "blue"},
        "defaults": {"temperature": 0.3, "max_tokens": 50},
        "params": {"top_k": 7, "presence_penalty": 0.5},
    }
    with registry_with({"remote": entry}):
        model = chatbot.get_chat_model("remote")
        reply = model.invoke("hello world")
        assert isinstance(reply, AIMessage)
        assert reply.content == "up says: hello world"
        assert reply.usage_metadata["output_tokens"] == 4
        chunks = list(model.stream("stream me"))
        assert "".join(c.content for c in chunks) == "up says: stream me"
        assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == 4

    first = up.chat_requests()[0]
    assert first["headers"]["authorization"] == f"Bearer {SECRET}"
    assert first["headers"]["openai-organization"] == "org-42"
    assert first["headers"]["x-team"] == "blue"
    body = first["body"]
    assert body["model"] == "remote-model"
    assert body["temperature"] == 0.3
    assert (body.get("max_completion_tokens") or body.get("max_tokens")) == 50
    assert body["top_k"] == 7  # unknown to OpenAI: passed through in the body
    assert body["presence_penalty"] == 0.5


async def test_openai_entry_async_and_overrides(up: Upstream) -> None:
    entry = {"provider": "openai", "model": "m", "base_url": up.url}
    with registry_with({"remote": entry}):
        model = chatbot.get_chat_model("remote", max_tokens=2)
        reply = await model.ainvoke("one two three")
        assert reply.content == "up says:"
        text = "".join([c.content async for c in model.astream("a b")])
        assert text == "up says:"
    # No key configured and a base_url given: a placeholder key, never a crash.
    assert up.chat_requests()[0]["headers"]["authorization"] == "Bearer EMPTY"


def test_secret_never_shown_or_logged(up: Upstream, monkeypatch, caplog) -> None:
    monkeypatch.setenv("UP_KEY", SECRET)
    entry = {"provider": "openai", "model": "m", "base_url": up.url, "api_key": "${UP_KEY}"}
    caplog.set_level(logging.DEBUG)
    with registry_with({"remote": entry}) as registry:
        model = chatbot.get_chat_model("remote")
        model.invoke("hi")
        shown = [
            repr(model),
            str(model),
            repr(registry.get("remote")),
            registry.get("remote").model_dump_json(),
        ]
    assert all(SECRET not in text for text in shown)
    assert SECRET not in caplog.text
    assert up.chat_requests()[0]["headers"]["authorization"] == f"Bearer {SECRET}"


def test_azure_deployment_and_api_version(up: Upstream) -> None:
    entry = {
        "provider": "openai",
        "model": "gpt-4o",
        "base_url": up.root,
        "deployment": "prod-4o",
        "api_version": "2024-10-21",
        "api_key": "azure-key",
    }
    embed = {**entry, "model": "embed-3", "deployment": "emb-dep"}
    with registry_with({"azure": entry}, embeddings={"azure-emb": embed}):
        assert chatbot.get_chat_model("azure").invoke("hi").content == "up says: hi"
        assert chatbot.get_embeddings("azure-emb").embed_query("v") == pytest.approx(
            fake_vector("v")
        )
    assert up.requests[-1]["path"] == "/openai/deployments/emb-dep/embeddings"
    request = up.chat_requests()[0]
    assert request["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert request["query"]["api-version"] == "2024-10-21"
    assert request["headers"]["api-key"] == "azure-key"


def test_http_proxy_is_used(up: Upstream) -> None:
    # The base_url is dead; only going through the proxy (the live upstream) can answer.
    entry = {"provider": "openai", "model": "m", "base_url": dead_url(), "http_proxy": up.root}
    with registry_with({"proxied": entry}):
        assert chatbot.get_chat_model("proxied").invoke("via proxy").content.endswith("proxy")
    assert up.chat_requests()[0]["headers"]["host"] != f"127.0.0.1:{up.port}"


def test_timeout_and_retries_come_from_the_entry(up: Upstream) -> None:
    up.fault, up.hang_s = "hang", 5
    entry = {
        "provider": "openai",
        "model": "m",
        "base_url": up.url,
        "timeout": 0.3,
        "max_retries": 1,
    }
    with registry_with({"slow": entry}):
        with pytest.raises(Exception, match="(?i)timed? ?out"):
            chatbot.get_chat_model("slow").invoke("hi")
    assert len(up.chat_requests()) == 2  # the first try plus one retry by the openai client


def test_embeddings_through_openai_compatible_upstream(up: Upstream) -> None:
    entry = {"provider": "openai", "model": "text-embed", "base_url": up.url}
    with registry_with(embeddings={"remote-embed": entry}):
        emb = chatbot.get_embeddings("remote-embed")
        vectors = emb.embed_documents(["first text", "second"])
        assert vectors[0] == pytest.approx(fake_vector("first text"))
        assert vectors[1] == pytest.approx(fake_vector("second"))
        assert emb.embed_query("q") == pytest.approx(fake_vector("q"))
    assert up.requests[0]["body"]["input"] == ["first text", "second"]


async def test_embeddings_async(up: Upstream) -> None:
    entry = {"provider": "openai", "model": "text-embed", "base_url": up.url}
    with registry_with(embeddings={"remote-embed": entry}):
        vector = await chatbot.get_embeddings("remote-embed").aembed_query("x")
    assert vector == pytest.approx(fake_vector("x"))


def test_official_api_without_key_names_the_field(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with registry_with({"gpt": {"provider": "openai", "model": "gpt-4o-mini"}}):
        with pytest.raises(ValueError, match="api_key"):
            chatbot.get_chat_model("gpt")


def test_registry_errors_name_the_field(monkeypatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(RegistryError, match=r"models\.x\.api_key.*NOPE_KEY"):
        with registry_with({"x": {"provider": "openai", "model": "m", "api_key": "${NOPE_KEY}"}}):
            pass
    with pytest.raises(RegistryError, match=r"models\.x\.model"):
        with registry_with({"x": {"provider": "openai", "base_url": "http://127.0.0.1:1/v1"}}):
            pass
    with pytest.raises(RegistryError, match=r"models\.x\.provider.*nosuch"):
        with registry_with({"x": {"provider": "nosuch", "model": "m"}}):
            pass


# --- custom providers ----------------------------------------------------------------

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
    _install_entry_point(tmp_path, monkeypatch, "echo-test", "tests.test_providers:EchoProvider")
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
            embeddings={"bad": {"provider": "tests.test_providers:ChatOnly", "model": "m"}}
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
        {"async-only": {"provider": "tests.test_providers:AsyncOnly", "model": "a"}}
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


# --- our own server as the upstream ---------------------------------------------------


def test_openai_entry_against_our_own_server_serving_tiny(server_url: str) -> None:
    local = chatbot.get_chat_model("tiny", max_tokens=8)
    expected = local.invoke("hello").content  # temperature 0: same weights, same text
    entry = {
        "provider": "openai",
        "model": "tiny",
        "base_url": f"{server_url}/v1",
        "defaults": {"temperature": 0, "max_tokens": 8},
        "replicas": [{"base_url": dead_url()}, {"base_url": f"{server_url}/v1"}],
        "router": {"backoff": 0.01},
    }
    with registry_with(
        {"own": entry},
        embeddings={
            "own-emb": {"provider": "openai", "model": "minilm", "base_url": f"{server_url}/v1"}
        },
    ):
        model = chatbot.get_chat_model("own")
        reply = model.invoke("hello")
        assert reply.content == expected
        assert reply.usage_metadata["output_tokens"] >= 1
        streamed = list(model.stream("hello"))
        assert "".join(c.content for c in streamed) == expected
        remote = chatbot.get_embeddings("own-emb").embed_documents(["a cat", "a dog"])
    local_vectors = chatbot.get_embeddings("minilm").embed_documents(["a cat", "a dog"])
    for got, want in zip(remote, local_vectors, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


# --- the documentation, run as written --------------------------------------------------

DOC_MARK = "## Online models, custom providers and a router"
ROOT = Path(__file__).parent.parent


def _doc_files() -> list[Path]:
    files = [ROOT / "docs" / "providers.md", ROOT / "README.md"]
    return [p for p in files if p.exists() and DOC_MARK in p.read_text()]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_documented_examples_work_as_written(
    doc: Path, up: Upstream, tmp_path, monkeypatch, capsys
) -> None:
    section = re.split(r"\n## ", doc.read_text().split(DOC_MARK, 1)[1])[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    with Upstream("second") as second:
        urls = {
            "http://127.0.0.1:8000/v1": up.url,
            "http://127.0.0.1:8001/v1": dead_url(),
            "http://127.0.0.1:8002/v1": second.url,
        }
        monkeypatch.setenv("QWEN_API_KEY", "qwen-key")
        monkeypatch.setenv("REPLICA2_KEY", "replica-2-key")
        monkeypatch.syspath_prepend(str(tmp_path))
        config: dict = {"models": {}, "embeddings": {}}
        scripts = []
        for lang, code in blocks:
            for doc_url, real in urls.items():
                code = code.replace(doc_url, real)
            if lang == "yaml":
                for key, entries in yaml.safe_load(code).items():
                    config[key].update(entries)
            elif lang == "python" and code.startswith("# my_provider.py"):
                (tmp_path / "my_provider.py").write_text(code)
            elif lang == "python":
                scripts.append(code)
            elif lang == "toml":
                target = tomllib.loads(code)["project"]["entry-points"]["chatbot.providers"]["echo"]
        with registry_with(config["models"], config["embeddings"]):
            for script in scripts:
                exec(compile(script, str(doc), "exec"), {})  # noqa: S102 - our own docs
            printed = capsys.readouterr().out
            assert "up says: Hello" in printed and "second says: Hello" in printed
            assert up.requests[-2]["headers"]["authorization"] == "Bearer qwen-key"
            assert second.chat_requests()[0]["headers"]["authorization"] == "Bearer replica-2-key"
            router = chatbot.get_chat_model("qwen")
            second.fault = "500"  # every replica down: the first fallback answers
            assert router.invoke("Hi").content == "up says: Hi"
            up.fault = "503"  # and then the next one
            assert router.invoke("Hi").content == "echo-1: Hi"
            echo = chatbot.get_chat_model("echo").invoke("Hi")
            assert echo.usage_metadata["output_tokens"] == 2
            assert engine_class(target).provider_cls.__name__ == "EchoProvider"
