"""`provider: openai` through the registry and factory, against real OpenAI-compatible
servers on 127.0.0.1 (custom providers: test_custom_providers.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from langchain_core.messages import AIMessage

import chatbot
from chatbot.engines import engine_class
from chatbot.registry import RegistryError
from tests.upstreams import Upstream, dead_url, fake_vector, registry_with

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the project supports 3.10)

SECRET = "sk-test-not-a-real-key-1234"


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
