"""The router: replicas, cooldown, fallbacks and streaming fail-over, against real
OpenAI-compatible upstreams on 127.0.0.1 that inject faults."""

from __future__ import annotations

import asyncio

import openai
import pytest
from langchain_core.messages import AIMessage
from prometheus_client import REGISTRY

import chatbot
from chatbot.errors import AllReplicasFailed, StreamInterrupted
from chatbot.registry import RegistryError
from model_adapters.router.chat import ChatRouter
from tests.upstreams import Upstream, dead_url, fake_vector, registry_with


@pytest.fixture(scope="module")
def ups():
    servers = [Upstream(name).start() for name in ("a", "b", "c")]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _reset(ups: list[Upstream]):
    for server in ups:
        server.fault, server.requests[:], server.drop_after, server.delay_s = "none", [], 2, 0
    yield


def routed(replicas: list[str], fallbacks: list[str] = (), **extra) -> dict:
    return {
        "provider": "openai",
        "model": "m",
        "timeout": 2,
        "replicas": [{"base_url": url} for url in replicas],
        "fallbacks": list(fallbacks),
        "router": {"backoff": 0.01, "cooldown": 30},
        **extra,
    }


def metric(name: str, model: str, replica: str) -> float:
    labels = {"model": model, "replica": replica.rstrip("/")}
    return REGISTRY.get_sample_value(f"chatbot_replica_{name}_total", labels) or 0.0


async def test_one_replica_dead_200_concurrent_requests_all_answered(ups) -> None:
    a, b, _ = ups
    dead = dead_url()
    a.delay_s = b.delay_s = 0.01  # keep requests in flight together
    with registry_with({"r-dead1": routed([a.url, dead, b.url])}):
        model = chatbot.get_chat_model("r-dead1")
        assert isinstance(model, ChatRouter)
        results = await asyncio.gather(
            *(model.ainvoke(f"q{i}") for i in range(200)), return_exceptions=True
        )
    failed = [r for r in results if not isinstance(r, AIMessage)]
    assert failed == []
    answers = [r.content for r in results]
    assert all(text.startswith(("a says", "b says")) for text in answers)
    assert answers[7].endswith("q7")
    assert len(a.chat_requests()) > 20 and len(b.chat_requests()) > 20  # spread over both
    assert len(a.chat_requests()) + len(b.chat_requests()) == 200
    assert metric("failures", "r-dead1", dead) >= 1
    assert metric("cooldowns", "r-dead1", dead) >= 1
    assert metric("requests", "r-dead1", a.url) == len(a.chat_requests())


def test_failed_replica_cools_down_and_round_robin_spreads(ups) -> None:
    a, b, _ = ups
    dead = dead_url()
    entry = routed([dead, a.url, b.url], router={"strategy": "round-robin", "backoff": 0.01})
    with registry_with({"r-rr": entry}):
        model = chatbot.get_chat_model("r-rr")
        replies = [model.invoke("x") for _ in range(10)]
    assert {r.response_metadata["replica"] for r in replies} == {a.url, b.url}
    assert metric("requests", "r-rr", dead) == 1  # in cooldown after its first failure
    assert abs(len(a.chat_requests()) - len(b.chat_requests())) <= 1


def test_all_replicas_dead_fallbacks_answer_in_order(ups) -> None:
    a, b, c = ups
    a.fault, b.fault = "500", "429"
    models = {
        "r-main": routed([dead_url(), a.url], fallbacks=["r-broken", "r-good"]),
        "r-broken": {"provider": "openai", "model": "m", "base_url": b.url, "max_retries": 0},
        "r-good": {"provider": "openai", "model": "m", "base_url": c.url},
    }
    with registry_with(models):
        reply = chatbot.get_chat_model("r-main").invoke("help")
    assert reply.content == "c says: help"
    assert reply.response_metadata["replica"] == "r-good"
    assert len(a.chat_requests()) == 1 and len(b.chat_requests()) == 1


async def test_fallback_to_the_local_tiny_model(ups) -> None:
    with registry_with({"r-local": routed([dead_url()], fallbacks=["tiny"])}):
        model = chatbot.get_chat_model("r-local", max_tokens=4)
        reply = await model.ainvoke("hi")
        streamed = [c async for c in model.astream("hi")]
    assert reply.response_metadata["replica"] == "tiny"
    assert reply.usage_metadata["output_tokens"] >= 1
    assert "".join(c.content for c in streamed) == reply.content  # temperature 0


def test_all_dead_without_fallback_names_every_replica(ups) -> None:
    a, b, _ = ups
    a.fault, a.hang_s, b.fault = "hang", 5, "503"
    dead = dead_url()
    with_password = dead_url().replace("//", "//user:s3cret@")
    entry = routed([dead, a.url, b.url, with_password], timeout=0.3)
    with registry_with({"r-none": entry}):
        model = chatbot.get_chat_model("r-none")
        with pytest.raises(AllReplicasFailed) as info:
            model.invoke("x")
        for url in (dead, a.url, b.url):
            assert url in str(info.value)
        assert "r-none" in str(info.value) and "Timeout" in str(info.value)
        assert len(info.value.tried) == 4 and "s3cret" not in str(info.value)
        # All in cooldown and no fallback: the next request still probes them, then says so.
        with pytest.raises(AllReplicasFailed, match="all replicas failed"):
            list(model.stream("x"))


def test_request_errors_are_not_failed_over(ups) -> None:
    a, b, _ = ups
    a.fault = "400"
    with registry_with({"r-400": routed([a.url, b.url], fallbacks=["tiny"])}):
        with pytest.raises(openai.BadRequestError):
            chatbot.get_chat_model("r-400").invoke("x")
    assert b.chat_requests() == []
    assert metric("failures", "r-400", a.url) == 0


@pytest.mark.parametrize("fault", ["drop", "500", "429"])
def test_stream_fails_over_before_the_first_token(ups, fault: str) -> None:
    a, b, _ = ups
    a.fault = fault
    with registry_with({"r-s": routed([a.url, b.url])}):
        chunks = list(chatbot.get_chat_model("r-s").stream("go on"))
    assert "".join(c.content for c in chunks) == "b says: go on"
    assert len(a.chat_requests()) == 1
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == 4


async def test_async_stream_fails_over_before_the_first_token(ups) -> None:
    a, b, _ = ups
    a.fault = "drop"
    with registry_with({"r-as": routed([a.url, b.url])}):
        chunks = [c async for c in chatbot.get_chat_model("r-as").astream("go on")]
    assert "".join(c.content for c in chunks) == "b says: go on"


@pytest.mark.parametrize("use_async", [False, True])
async def test_stream_does_not_fail_over_after_the_first_token(ups, use_async: bool) -> None:
    a, b, _ = ups
    a.fault, a.drop_after = "drop-mid-stream", 2
    got: list[str] = []
    with registry_with({"r-mid": routed([a.url, b.url], fallbacks=["tiny"])}):
        model = chatbot.get_chat_model("r-mid")
        with pytest.raises(StreamInterrupted, match=a.url):
            if use_async:
                async for chunk in model.astream("one two three"):
                    got.append(chunk.content)
            else:
                for chunk in model.stream("one two three"):
                    got.append(chunk.content)
    assert "".join(got) == "a says:"  # what was sent stays sent; nothing from b mixed in
    assert b.chat_requests() == []


def test_router_passes_tools_through(ups) -> None:
    a, _, _ = ups

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    with registry_with({"r-tools": routed([a.url])}):
        bound = chatbot.get_chat_model("r-tools").bind_tools([get_weather])
        assert bound.invoke("weather?").content == "a says: weather?"
    tools = a.chat_requests()[0]["body"]["tools"]
    assert tools[0]["function"]["name"] == "get_weather"


async def test_embeddings_router_skips_a_dead_replica(ups) -> None:
    a, _, _ = ups
    entry = routed([dead_url(), a.url])
    with registry_with(embeddings={"r-emb": entry}):
        emb = chatbot.get_embeddings("r-emb")
        assert emb.embed_query("x") == pytest.approx(fake_vector("x"))
        assert (await emb.aembed_documents(["y"]))[0] == pytest.approx(fake_vector("y"))


def test_registry_rejects_bad_router_entries(ups) -> None:
    with pytest.raises(RegistryError, match=r"fallbacks.*cycle"):
        with registry_with(
            {"r-x": routed([ups[0].url], ["r-y"]), "r-y": routed([ups[1].url], ["r-x"])}
        ):
            pass
    with pytest.raises(RegistryError, match=r"r-l\.replicas.*local"):
        with registry_with({"r-l": {"path": "tiny-qwen2", "replicas": [{"base_url": "x"}]}}):
            pass
    with pytest.raises(RegistryError, match=r"r-o\.router\.strategy"):
        with registry_with({"r-o": routed([ups[0].url], router={"strategy": "random"})}):
            pass


def test_router_serves_over_our_v1_api(ups, server_url: str) -> None:
    a, _, _ = ups
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    models = {"r-v1": routed([dead_url(), a.url]), "r-v1-dead": routed([dead_url()])}
    with registry_with(models):
        reply = client.chat.completions.create(
            model="r-v1", messages=[{"role": "user", "content": "over v1"}]
        )
        assert reply.choices[0].message.content == "a says: over v1"
        stream = client.chat.completions.create(
            model="r-v1", messages=[{"role": "user", "content": "s"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "a says: s"
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model="r-v1-dead", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code >= 500
