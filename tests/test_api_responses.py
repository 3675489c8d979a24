"""POST/GET/DELETE /v1/responses against a real server on the tiny model: the official
openai client (plain, streamed, a function tool round trip, structured output,
previous_response_id across a restart), every body and event validated against the
OpenAI spec's schemas, and unsupported fields refused by name."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.responses_schema import validate, validate_event
from tests.server_utils import start_server

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("responses-data")


def _serve(data_dir):
    from chatbot.api import create_app
    from chatbot.settings import Settings

    app = create_app(Settings(api_keys=[], cors_origins=[], data_dir=data_dir), show_progress=False)
    return start_server(app, wait_ready=True)


@pytest.fixture(scope="module")
def base(data_dir):
    with _serve(data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def oa(base):
    return OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)


def raw_post(base, body):
    return httpx.post(f"{base}/v1/responses", json=body, timeout=120)


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        event = [ln[7:] for ln in lines if ln.startswith("event: ")]
        data = [ln[6:] for ln in lines if ln.startswith("data: ")]
        if data:
            out.append((event[0] if event else None, json.loads(data[0])))
    return out


def test_plain(oa, base):
    out = oa.responses.create(model="tiny", input="hi there", max_output_tokens=8)
    assert out.status in ("completed", "incomplete")
    assert out.output[0].type == "message"
    assert out.output_text and isinstance(out.output_text, str)
    assert out.usage.input_tokens > 0 and 0 < out.usage.output_tokens <= 8
    raw = raw_post(
        base,
        {
            "model": "tiny",
            "input": "hi there",
            "max_output_tokens": 8,
            "instructions": "Be brief.",
            "metadata": {"k": "v"},
        },
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    validate(body, "Response")
    assert body["output_text" if "output_text" in body else "output"]  # SDK computes output_text
    assert body["metadata"] == {"k": "v"} and body["instructions"] == "Be brief."
    # The same input as a list of items is the same prompt: the same greedy answer.
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}]
    again = oa.responses.create(model="tiny", input=items, max_output_tokens=8)
    assert again.output_text == out.output_text
    assert again.usage.input_tokens == out.usage.input_tokens
    # Stored: GET answers the same object; DELETE removes it.
    got = oa.responses.retrieve(out.id)
    assert got.output_text == out.output_text
    validate(httpx.get(f"{base}/v1/responses/{out.id}").json(), "Response")
    oa.responses.delete(out.id)
    with pytest.raises(NotFoundError):
        oa.responses.retrieve(out.id)


def test_streaming_event_sequence(oa, base):
    with httpx.stream(
        "POST",
        f"{base}/v1/responses",
        timeout=120,
        json={"model": "tiny", "input": "hi", "max_output_tokens": 8, "stream": True},
    ) as r:
        assert r.status_code == 200
        events = sse_events(r.read().decode())
    for name, event in events:
        assert name == event["type"]
        validate_event(event)
    kinds = [e["type"] for _, e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        kinds[-1],
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    deltas = "".join(e["delta"] for _, e in events if e["type"] == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas
    assert final["usage"]["output_tokens"] > 0

    # The SDK's stream helper parses every event (the tiny model stops at the limit, so
    # the last is response.incomplete; get_final_response wants response.completed).
    with oa.responses.stream(model="tiny", input="hi", max_output_tokens=8) as stream:
        seen = list(stream)
    texts = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert "".join(texts) == deltas
    assert seen[-1].type == kinds[-1] and seen[-1].response.output[0].content[0].text == deltas


def test_function_tool_round_trip(oa, base):
    first = oa.responses.create(
        model="tiny",
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    args = json.loads(calls[0].arguments)
    assert isinstance(args["city"], str)
    validate(
        oa.responses.retrieve(first.id).model_dump(mode="json", exclude_none=False)
        if False
        else httpx.get(f"{base}/v1/responses/{first.id}").json(),
        "Response",
    )
    # Send the result back, with the whole history by hand (no previous_response_id).
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": calls[0].call_id,
            "name": "get_weather",
            "arguments": calls[0].arguments,
        },
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"},
    ]
    second = oa.responses.create(model="tiny", input=history, tools=[WEATHER], max_output_tokens=8)
    assert second.output and second.usage.input_tokens > first.usage.input_tokens
    # A result for a call nobody made is a 400 naming the item.
    with pytest.raises(BadRequestError):
        oa.responses.create(model="tiny", input=history[2:], max_output_tokens=4)

    # Streamed forced call: argument deltas add up to the call's arguments.
    with httpx.stream(
        "POST",
        f"{base}/v1/responses",
        timeout=120,
        json={
            "model": "tiny",
            "input": "Weather?",
            "tools": [WEATHER],
            "stream": True,
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 40,
        },
    ) as r:
        events = [e for _, e in sse_events(r.read().decode())]
    for event in events:
        validate_event(event)
    args = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done and done[0]["arguments"] == args and json.loads(args)["city"] is not None
    assert events[-1]["response"]["output"][-1]["type"] == "function_call"


def test_text_format_json_schema(oa, base):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    out = oa.responses.create(
        model="tiny",
        input="A city as JSON",
        max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    value = json.loads(out.output_text)
    assert set(value) == {"city"} and isinstance(value["city"], str)
    raw = raw_post(
        base,
        {
            "model": "tiny",
            "input": "JSON please",
            "max_output_tokens": 30,
            "text": {"format": {"type": "json_object"}},
        },
    )
    validate(raw.json(), "Response")
    assert isinstance(json.loads(raw.json()["output"][0]["content"][0]["text"]), dict)


def test_previous_response_id_survives_a_restart(data_dir, base):
    first = OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0).responses.create(
        model="tiny", input="My name is Ada.", max_output_tokens=6
    )
    with _serve(data_dir) as other:  # a second server process state on the same data dir
        oa = OpenAI(base_url=f"{other}/v1", api_key="x", max_retries=0)
        follow = oa.responses.create(
            model="tiny",
            previous_response_id=first.id,
            input="What is my name?",
            max_output_tokens=6,
        )
        assert follow.previous_response_id == first.id
        # The same conversation sent by hand is the same prompt, token for token.
        by_hand = oa.responses.create(
            model="tiny",
            store=False,
            max_output_tokens=6,
            input=[
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "What is my name?"},
            ],
        )
        assert follow.usage.input_tokens == by_hand.usage.input_tokens
        assert follow.output_text == by_hand.output_text
        with pytest.raises(NotFoundError):
            oa.responses.retrieve(by_hand.id)  # store: false
        with pytest.raises(NotFoundError):
            oa.responses.create(model="tiny", previous_response_id="resp_nope", input="x")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"include": ["file_search_call.results"]}, "include[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ],
)
def test_unsupported_fields_are_400_naming_them(base, extra, param):
    r = raw_post(base, {"model": "tiny", "input": "hi", "max_output_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"]
