"""Pure mapping functions of the API on real LangChain message objects (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import ValidationError

from chatbot.api.errors import APIError, from_exception, loc_to_param
from chatbot.api.openai.convert import (
    as_chunk,
    chunk_to_delta,
    finish_reason,
    message_to_openai,
    to_langchain_messages,
    usage_to_openai,
)
from chatbot.api.openai.protocol import ChatCompletionRequest
from chatbot.api.sse import sse_events
from model_adapters.generation import ContextLengthError, QueueFullError
from model_adapters.messages import UnsupportedContentError

# --- OpenAI messages -> LangChain ---------------------------------------------------


def test_roles_map_to_langchain_messages():
    messages = to_langchain_messages(
        [
            {"role": "system", "content": "be brief"},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "dev "}, {"type": "text", "text": "rules"}],
            },
            {"role": "user", "content": "weather in Paris?", "name": "ann"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "function", "name": "old_fn", "content": "42"},
        ]
    )
    kinds = [type(m) for m in messages]
    assert kinds == [
        SystemMessage,
        SystemMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        FunctionMessage,
    ]
    assert messages[1].content == "dev rules"
    assert messages[2].name == "ann"
    assert messages[3].tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}
    ]
    assert messages[4].tool_call_id == "call_1"
    assert messages[4].content == "sunny"


def test_user_content_parts_are_kept_for_models_that_take_them():
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    (message,) = to_langchain_messages([{"role": "user", "content": parts}])
    assert message.content == parts


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "messages[1].role"),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "messages[0].content[0].type"),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0].type",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "function": {"name": "f", "arguments": "{not json"}}
                    ],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([{"role": "function", "content": "x"}], "messages[0].name"),
    ],
)
def test_bad_messages_are_400_naming_the_field(messages, param):
    with pytest.raises(APIError) as info:
        to_langchain_messages(messages)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.body()["error"]["type"] == "invalid_request_error"


# --- LangChain output -> OpenAI ----------------------------------------------------


def test_ai_message_with_tool_calls_maps_to_openai_tool_calls():
    message = AIMessage(
        content="",
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_9"}],
    )
    out = message_to_openai(message).model_dump()
    assert out["role"] == "assistant"
    assert out["content"] is None
    assert out["refusal"] is None
    (call,) = out["tool_calls"]
    assert call == {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
    }
    assert finish_reason("stop", has_tool_calls=True) == "tool_calls"


def test_plain_message_has_no_tool_calls_key():
    out = message_to_openai(AIMessage(content=[{"type": "text", "text": "hi"}])).model_dump()
    assert out == {"role": "assistant", "content": "hi", "refusal": None}


def test_tool_call_without_id_gets_one():
    message = AIMessage(content="", tool_calls=[{"name": "f", "args": {}, "id": None}])
    (call,) = message_to_openai(message).model_dump()["tool_calls"]
    assert call["id"].startswith("call_")


def test_streamed_tool_call_chunks_map_to_delta_tool_calls():
    first = AIMessageChunk(
        content="",
        tool_call_chunks=[{"name": "get_weather", "args": '{"ci', "id": "call_1", "index": 0}],
    )
    rest = AIMessageChunk(
        content="",
        tool_call_chunks=[{"name": None, "args": 'ty": "Paris"}', "id": None, "index": 0}],
    )
    d1 = chunk_to_delta(first).model_dump()
    d2 = chunk_to_delta(rest).model_dump()
    assert d1 == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"ci'},
            }
        ]
    }
    assert d2 == {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}
    # Merged the LangChain way, the chunks are one parsed call.
    merged = first + rest
    assert merged.tool_calls[0]["args"] == {"city": "Paris"}


def test_text_chunk_delta_and_empty_chunk():
    assert chunk_to_delta(AIMessageChunk(content="hel")).model_dump() == {"content": "hel"}
    assert chunk_to_delta(AIMessageChunk(content="")) is None


def test_as_chunk_accepts_messages_and_strings():
    full = AIMessage(content="x", tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c"}])
    chunk = as_chunk(full)
    assert isinstance(chunk, AIMessageChunk)
    assert chunk.tool_calls[0]["args"] == {"a": 1}
    assert as_chunk("plain").content == "plain"


def test_as_chunk_keeps_unparsed_calls_off_the_wire():
    """A cut-off or nameless call must not turn into a call again (AIMessageChunk would
    re-parse its partial JSON): it stays invalid, and only its text goes out."""
    broken = [
        {"name": "get_weather", "args": '{"city": "Par', "id": "a", "error": "cut"},
        {"name": None, "args": '{"name": "x", "arguments": {}}', "id": "b", "error": "no name"},
    ]
    chunk = as_chunk(AIMessage(content="", invalid_tool_calls=broken))
    assert chunk.tool_calls == [] and chunk.tool_call_chunks == []
    assert [c["id"] for c in chunk.invalid_tool_calls] == ["a", "b"]
    wire = message_to_openai(chunk)
    assert wire.tool_calls is None and '{"city": "Par' in wire.content


@pytest.mark.parametrize(
    ("raw", "calls", "legacy", "expected"),
    [
        ("stop", False, False, "stop"),
        ("length", False, False, "length"),
        ("cancelled", False, False, "stop"),
        (None, False, False, "stop"),
        ("max_tokens", False, False, "length"),
        ("end_turn", True, False, "tool_calls"),
        ("tool_calls", False, True, "stop"),
    ],
)
def test_finish_reasons(raw, calls, legacy, expected):
    assert finish_reason(raw, calls, legacy) == expected


def test_usage_mapping():
    usage = usage_to_openai({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7})
    assert usage.model_dump() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert usage_to_openai(None).model_dump()["total_tokens"] == 0


# --- errors ------------------------------------------------------------------------


def test_validation_error_names_the_field():
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": 5}]}
        )
    api = from_exception(info.value)
    assert api.status == 400
    assert api.param == "messages[0].content"
    assert loc_to_param(("body", "messages", 2, "role")) == "messages[2].role"


def test_request_validation_error_and_json_errors():
    exc = RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", 5),
                "msg": "JSON decode error",
                "ctx": {"error": "Expecting value"},
            }
        ]
    )
    api = from_exception(exc)
    assert api.status == 400 and "not valid JSON" in api.message and api.param is None


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ContextLengthError("too long"), 400, "context_length_exceeded"),
        (QueueFullError("full"), 429, "rate_limit_exceeded"),
        (UnsupportedContentError("image"), 400, "unsupported_content"),
        (TimeoutError(), 504, "timeout"),
        (RuntimeError("boom"), 500, None),
    ],
)
def test_exception_mapping(exc, status, code):
    api = from_exception(exc)
    assert api.status == status
    assert api.code == code
    body = api.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert api.headers["Retry-After"]
    if status == 500:
        assert "boom" not in body["message"]  # internals are logged, not sent


def test_sse_error_mid_stream_then_done():
    async def payloads():
        yield {"n": 1}
        raise QueueFullError("gone")

    async def collect():
        return [e["data"] async for e in sse_events(payloads())]

    events = asyncio.run(collect())
    assert json.loads(events[0]) == {"n": 1}
    assert json.loads(events[1])["error"]["code"] == "rate_limit_exceeded"
    assert events[2] == "[DONE]"


def test_fast_text_chunk_json_equals_the_pydantic_frame():
    from chatbot.api.openai.chat import stream_chunk_head, text_chunk_json
    from chatbot.api.openai.protocol import (
        ChatCompletionStreamChoice,
        ChatCompletionStreamResponse,
        DeltaMessage,
    )
    from chatbot.api.sse import encode

    for text in ["hi", 'quo"te\\ \n\t', "héllo ☃ 你好", "\u2028"]:
        choice = ChatCompletionStreamChoice(index=2, delta=DeltaMessage(content=text))
        slow = encode(
            ChatCompletionStreamResponse(id="c-1", created=7, model="m/é", choices=[choice])
        )
        fast = text_chunk_json(stream_chunk_head("c-1", 7, "m/é"), 2, text)
        assert json.loads(fast) == json.loads(slow)
        assert list(json.loads(fast)) == list(json.loads(slow))  # same key order
