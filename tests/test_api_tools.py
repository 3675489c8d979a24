"""Tools, tool_choice and response_format through the OpenAI API: LangChain tool calls
mapped to OpenAI's `tool_calls` (whole and streamed), validated against the spec."""

from __future__ import annotations

import json

import pytest

from tests.openai_schema import validate
from tests.server_utils import sse_payloads

HELLO = [{"role": "user", "content": "hi"}]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
FORCE = {"type": "function", "function": {"name": "get_weather"}}


def test_tool_calls_map_to_openai_format(client, http):
    weather = [{"role": "user", "content": "weather in paris"}]
    out = client.chat.completions.create(
        model="tiny", messages=weather, tools=TOOLS, tool_choice=FORCE, max_tokens=60
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)  # forced calls are valid JSON

    body = {
        "model": "tiny",
        "messages": weather,
        "tools": TOOLS,
        "tool_choice": FORCE,
        "max_tokens": 60,
    }
    validate(http.post("/v1/chat/completions", json=body).json(), "CreateChatCompletionResponse")
    r = http.post("/v1/chat/completions", json={**body, "stream": True})
    payloads = [json.loads(p) for p in sse_payloads(r.text)[:-1]]
    for payload in payloads:
        validate(payload, "CreateChatCompletionStreamResponse")
    deltas = [tc for p in payloads for tc in (p["choices"][0]["delta"].get("tool_calls") or [])]
    assert deltas[0]["id"] and deltas[0]["function"]["name"] == "get_weather"
    assert all(d["index"] == 0 for d in deltas)
    streamed_args = "".join(d["function"]["arguments"] for d in deltas)
    assert json.loads(streamed_args) == json.loads(call.function.arguments)
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # The tool result goes back as a `tool` message.
    follow = client.chat.completions.create(
        model="tiny",
        max_tokens=4,
        tools=TOOLS,
        messages=[
            *weather,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tools_on_a_model_without_tool_calling_are_a_clear_400():
    from langchain_core.language_models import FakeListChatModel

    from chatbot.api.errors import APIError
    from chatbot.api.openai.chat import bind_tools
    from chatbot.api.openai.protocol import ChatCompletionRequest

    model = FakeListChatModel(responses=["x"])  # LangChain's base bind_tools raises
    body = ChatCompletionRequest(model="fake", messages=HELLO, tools=TOOLS, tool_choice="auto")
    with pytest.raises(APIError) as info:
        bind_tools(model, body, "fake")
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "tools",
        "tools_not_supported",
    )
    body = ChatCompletionRequest(
        model="fake", messages=HELLO, response_format={"type": "json_object"}
    )
    with pytest.raises(APIError) as info:
        bind_tools(model, body, "fake")
    assert info.value.param == "response_format"
    body = ChatCompletionRequest(model="fake", messages=HELLO, response_format={"type": "text"})
    assert bind_tools(model, body, "fake") == (model, {})


def test_response_format_json_object(client):
    out = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=40, response_format={"type": "json_object"}
    )
    text = out.choices[0].message.content
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")
