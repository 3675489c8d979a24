"""POST /v1/messages and /v1/messages/count_tokens against a real server on the tiny
model, with the official `anthropic` SDK (sync, async, messages.stream): text, stop
sequences, forced tool_use then tool_result, count_tokens, Anthropic's error JSON, and
x-api-key auth."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.server_utils import start_server

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def claude(server_url):
    return anthropic.Anthropic(base_url=server_url, api_key="x", max_retries=0)


def test_create_text_and_stop_sequences(claude):
    out = claude.messages.create(model="tiny", max_tokens=8, messages=HI, system="Be brief.")
    assert out.type == "message" and out.role == "assistant" and out.model == "tiny"
    assert out.content[0].type == "text" and out.content[0].text
    assert out.stop_reason in ("end_turn", "max_tokens")
    assert out.usage.input_tokens > 0 and 0 < out.usage.output_tokens <= 8
    text = out.content[0].text
    # Stop on a piece of the greedy answer: the text ends before it, and says which.
    stop = text[2:4]
    cut = claude.messages.create(
        model="tiny",
        max_tokens=8,
        messages=HI,
        system="Be brief.",
        stop_sequences=["zzzz-never", stop],
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]
    # top_k / temperature / top_p are taken (top_k=1 is greedy whatever the temperature).
    # This SDK version no longer has them as arguments: sent in the body.
    sampling = {"temperature": 1.0, "top_p": 0.9, "top_k": 1}
    same = claude.messages.create(
        model="tiny", max_tokens=8, messages=HI, system="Be brief.", extra_body=sampling
    )
    assert same.content[0].text == text


def test_stream_event_sequence(claude, server_url):
    with claude.messages.stream(model="tiny", max_tokens=8, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0

    body = {"model": "tiny", "max_tokens": 8, "messages": HI, "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/messages", json=body, timeout=120) as r:
        blocks = [b for b in r.read().decode().split("\n\n") if b.strip()]
    events = []
    for block in blocks:
        lines = dict(ln.split(": ", 1) for ln in block.split("\n") if ": " in ln)
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data["type"])
    assert events[0] == "message_start" and events[1] == "content_block_start"
    assert set(events[2:-3]) == {"content_block_delta"}
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_forced_tool_use_then_tool_result(claude):
    first = claude.messages.create(
        model="tiny",
        max_tokens=40,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = [b for b in first.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather" and isinstance(use[0].input["city"], str)
    second = claude.messages.create(
        model="tiny",
        max_tokens=8,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use[0].id, "content": "sunny, 21C"}
                ],
            },
        ],
    )
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # "any" forces some tool; streamed, the input arrives as input_json_delta pieces.
    with claude.messages.stream(
        model="tiny",
        max_tokens=40,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert isinstance(final.content[-1].input["city"], str)
    # "none": text, no tool.
    none = claude.messages.create(
        model="tiny", max_tokens=6, tools=[WEATHER], tool_choice={"type": "none"}, messages=HI
    )
    assert all(b.type == "text" for b in none.content)


def test_count_tokens_matches_usage(claude):
    kwargs = {"model": "tiny", "messages": HI, "system": "Be brief.", "tools": [WEATHER]}
    counted = claude.messages.count_tokens(**kwargs)
    out = claude.messages.create(max_tokens=4, **kwargs)
    assert counted.input_tokens == out.usage.input_tokens > 0


async def test_async_client(server_url):
    client = anthropic.AsyncAnthropic(base_url=server_url, api_key="x", max_retries=0)
    out = await client.messages.create(model="tiny", max_tokens=6, messages=HI)
    async with client.messages.stream(model="tiny", max_tokens=6, messages=HI) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == out.content[0].text


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
        ({"mcp_servers": []}, "mcp_servers"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "document"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_errors_are_anthropic_json(server_url, extra, word):
    body = {"model": "tiny", "max_tokens": 4, "messages": HI, **extra}
    r = httpx.post(f"{server_url}/v1/messages", json=body, timeout=60)
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert word in data["error"]["message"]


def test_sdk_errors(claude):
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="claude-nope", max_tokens=4, messages=HI)
    assert err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model="tiny", max_tokens=4, messages=HI, extra_body={"temperature": 3}
        )


def test_x_api_key_auth():
    from chatbot.api import create_app
    from chatbot.settings import Settings

    app = create_app(Settings(api_keys=["sekret"], cors_origins=[]), show_progress=False)
    with start_server(app, wait_ready=True, headers={"Authorization": "Bearer sekret"}) as url:
        ok = anthropic.Anthropic(base_url=url, api_key="sekret", max_retries=0)
        assert ok.messages.create(model="tiny", max_tokens=2, messages=HI).content is not None
        bad = anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as err:
            bad.messages.create(model="tiny", max_tokens=2, messages=HI)
        assert err.value.body["error"]["type"] == "authentication_error"
        # Bearer works on /v1/messages too, and x-api-key on the OpenAI routes.
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"x-api-key": "sekret"},
            json={"model": "tiny", "messages": HI, "max_tokens": 2},
            timeout=60,
        )
        assert r.status_code == 200


def test_middleware_errors_are_anthropic_json():
    """401, 413 and 429 answered by the middleware (before any route runs) are in
    Anthropic's error JSON on /v1/messages and count_tokens, so the SDK raises its typed
    errors; the OpenAI routes keep OpenAI's form."""
    from chatbot.api import create_app
    from chatbot.settings import Settings

    settings = Settings(
        api_keys=["sekret", "probe"], cors_origins=[], max_request_bytes=4096, rate_limit_rpm=2
    )
    app = create_app(settings, show_progress=False)
    # The readiness probe has a key of its own: "sekret"'s budget is the test's.
    with start_server(app, wait_ready=True, headers={"Authorization": "Bearer probe"}) as url:
        bad = anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as auth:
            bad.messages.count_tokens(model="tiny", messages=HI)
        assert auth.value.body["error"]["type"] == "authentication_error"

        ok = anthropic.Anthropic(base_url=url, api_key="sekret", max_retries=0)
        huge = [{"role": "user", "content": "x" * 8000}]
        with pytest.raises(anthropic.ContentTooLargeError) as big:
            ok.messages.create(model="tiny", max_tokens=2, messages=huge)
        assert big.value.body["error"]["type"] == "request_too_large"

        # Two requests a minute for this key (x-api-key counts as the key): the third is 429.
        assert ok.messages.count_tokens(model="tiny", messages=HI).input_tokens > 0
        assert ok.messages.count_tokens(model="tiny", messages=HI).input_tokens > 0
        with pytest.raises(anthropic.RateLimitError) as limited:
            ok.messages.create(model="tiny", max_tokens=2, messages=HI)
        assert limited.value.body["error"]["type"] == "rate_limit_error"

        # The raw bodies: Anthropic's shape here, OpenAI's on the OpenAI routes.
        for path, headers in [
            ("/v1/messages", {"x-api-key": "wrong"}),
            ("/v1/messages/count_tokens", {}),
        ]:
            r = httpx.post(f"{url}{path}", json={}, headers=headers, timeout=30)
            assert r.status_code == 401
            assert r.json() == {
                "type": "error",
                "error": {"type": "authentication_error", "message": r.json()["error"]["message"]},
            }
        r = httpx.post(
            f"{url}/v1/messages/count_tokens",
            content=b"{" + b" " * 5000 + b"}",
            headers={"x-api-key": "sekret", "content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 413 and r.json()["type"] == "error", r.text
        r = httpx.post(f"{url}/v1/messages", json=HI[0], headers={"x-api-key": "sekret"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1
        r = httpx.post(f"{url}/v1/chat/completions", json={}, headers={"x-api-key": "wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_validation_errors_are_anthropic_json(server_url):
    # FastAPI validates the body; the app's handler answers in Anthropic's form by path.
    for path, body in [
        ("/v1/messages", {"model": "tiny", "messages": HI}),  # no max_tokens
        ("/v1/messages/count_tokens", {"model": "tiny", "messages": []}),
        ("/v1/messages", [1, 2]),
    ]:
        r = httpx.post(f"{server_url}{path}", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["type"] == "error", r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    json_type = {"content-type": "application/json"}
    r = httpx.post(f"{server_url}/v1/messages", content=b"{nope", headers=json_type, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_openapi_shows_the_request_bodies(server_url):
    spec = httpx.get(f"{server_url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    for path, name, required in [
        ("/v1/messages", "MessagesRequest", {"model", "messages", "max_tokens"}),
        ("/v1/messages/count_tokens", "CountTokensRequest", {"model", "messages"}),
    ]:
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{name}"
        assert set(schemas[name]["required"]) == required
        assert {"system", "tools", "tool_choice"} <= set(schemas[name]["properties"])
    tool_choice = schemas["ToolChoice"]["properties"]["type"]
    assert set(tool_choice["enum"]) == {"auto", "any", "tool", "none"}
