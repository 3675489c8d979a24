"""Tools and structured output over /v1 with real clients (official `openai`,
`langchain_openai.ChatOpenAI`) against the real server and the tiny random models."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai import BadRequestError
from pydantic import BaseModel

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
TOOLS = [WEATHER, ADD]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "weather in Paris, then add 2 and 3"}]
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "express": {"type": "boolean"},
    },
    "required": ["id", "tags", "express"],
}


class Joke(BaseModel):
    setup: str
    punchline: str


def streamed_calls(stream) -> tuple[dict[int, dict], str | None]:
    """Rebuild calls from OpenAI delta.tool_calls framing; checks the framing on the way."""
    calls: dict[int, dict] = {}
    finish = None
    for event in stream:
        choice = event.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:  # the first delta of a call names it
                assert delta.id and delta.type == "function" and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "args": ""}
            else:
                assert not delta.function.name
            calls[delta.index]["args"] += delta.function.arguments or ""
    return calls, finish


@pytest.mark.parametrize("model", ["tiny", "tiny-llama", "tiny-plain"])
def test_named_tool_choice_streamed_and_not(client, model):
    force = {"type": "function", "function": {"name": "get_weather"}}
    args = dict(model=model, messages=ASK, tools=TOOLS, tool_choice=force, max_tokens=60)
    out = client.chat.completions.create(**args)
    assert out.choices[0].finish_reason == "tool_calls"
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS["get_weather"])

    calls, finish = streamed_calls(client.chat.completions.create(**args, stream=True))
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["args"]) == json.loads(call.function.arguments)


def test_required_tool_choice_and_round_trip(client):
    out = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=60,
        temperature=1.0,
        seed=11,
    )
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name in PARAMS
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
    follow = client.chat.completions.create(
        model="tiny",
        max_tokens=6,
        tools=TOOLS,
        tool_choice="none",
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
    )
    assert follow.choices[0].message.tool_calls is None
    assert follow.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}
    args = dict(
        model="tiny", messages=ASK, max_tokens=50, temperature=1.0, seed=5, response_format=fmt
    )
    if stream:
        text = "".join(
            e.choices[0].delta.content or ""
            for e in client.chat.completions.create(**args, stream=True)
        )
    else:
        text = client.chat.completions.create(**args).choices[0].message.content
    jsonschema.validate(json.loads(text), ORDER)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-plain"])
def test_response_format_json_object_streamed(client, model):
    events = client.chat.completions.create(
        model=model,
        messages=ASK,
        max_tokens=40,
        temperature=1.0,
        seed=2,
        response_format={"type": "json_object"},
        stream=True,
    )
    text = "".join(e.choices[0].delta.content or "" for e in events)
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "nope",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 7}},
                }
            },
            "response_format",
        ),
    ],
)
def test_bad_tool_choice_and_schema_are_400(client, extra, words):
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=5, **extra)
    assert words in info.value.message


def test_langchain_chat_openai_tools_and_structured_output(server_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{server_url}/v1", api_key="x", model="tiny", max_tokens=60, temperature=0
    )
    reply = llm.bind_tools([WEATHER, ADD], tool_choice="add").invoke("2 + 3?")
    assert [c["name"] for c in reply.tool_calls] == ["add"]
    jsonschema.validate(reply.tool_calls[0]["args"], PARAMS["add"])
    assert isinstance(llm.with_structured_output(Joke).invoke("a joke"), Joke)


def test_model_card_publishes_capabilities(client):
    card = client.models.retrieve("tiny").model_dump()
    assert {"streaming", "tools", "tool_choice", "json_schema", "json_object"} <= set(
        card["capabilities"]
    )
    assert "vision" not in card["capabilities"]
    assert card["context_length"] == 1024
