"""OpenAI wire format <-> LangChain messages. Pure functions, no I/O.

In:  `to_langchain_messages` (the one place OpenAI messages become LangChain messages).
Out: `message_to_openai` (a whole AIMessage), `chunk_to_delta` (a streamed chunk),
     `finish_reason`, `usage_to_openai`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from chatbot.api.errors import APIError, bad_request
from chatbot.api.openai.protocol import (
    ChatMessage,
    DeltaMessage,
    ToolCall,
    ToolCallDelta,
    ToolCallDeltaFunction,
    ToolCallFunction,
    UsageInfo,
)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# --- OpenAI messages -> LangChain ---------------------------------------------------


def _content(value: Any, where: str, *, allow_parts: bool = True) -> str | list[Any]:
    """String content as is; content-part arrays checked for shape (each a typed dict)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not allow_parts:
        raise bad_request(f"'{where}' must be a string or an array of content parts.", where)
    for i, part in enumerate(value):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise bad_request(
                f"'{where}[{i}]' must be an object with a 'type'.", f"{where}[{i}].type"
            )
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise bad_request(f"'{where}[{i}].text' must be a string.", f"{where}[{i}].text")
    return [dict(p) for p in value]


def _text_only(value: Any, where: str) -> str:
    """Roles whose content must be text (system, developer): join text parts."""
    content = _content(value, where)
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part["type"] != "text":
            raise bad_request(
                f"'{where}[{i}]': only text content parts are allowed for this role "
                f"(got {part['type']!r}).",
                f"{where}[{i}].type",
            )
        texts.append(part["text"])
    return "".join(texts)


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    out = []
    for j, call in enumerate(calls or []):
        here = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise bad_request(f"'{here}.function.name' is required.", f"{here}.function.name")
        raw = function.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            raise bad_request(
                f"'{here}.function.arguments' must be a JSON object encoded as a string.",
                f"{here}.function.arguments",
            ) from None
        if not isinstance(args, dict):
            raise bad_request(
                f"'{here}.function.arguments' must encode a JSON object.",
                f"{here}.function.arguments",
            )
        call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
        out.append({"name": function["name"], "args": args, "id": call_id, "type": "tool_call"})
    return out


def to_langchain_messages(messages: Sequence[Mapping[str, Any]]) -> list[BaseMessage]:
    """OpenAI chat messages (dicts) -> LangChain messages.

    Roles: system and developer -> SystemMessage, user -> HumanMessage (content-part
    arrays kept for models that take them), assistant -> AIMessage (with tool_calls),
    tool -> ToolMessage (needs tool_call_id), function (deprecated) -> FunctionMessage.
    Anything else raises a 400 APIError naming the field, e.g. `messages[2].role`.
    """
    out: list[BaseMessage] = []
    call_ids: set[str] = set()  # ids of the tool calls so far: tool results must answer one
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise bad_request(f"'{where}' must be an object.", where)
        role = message.get("role")
        extra = {"name": message["name"]} if message.get("name") else {}
        content = message.get("content")
        if role in ("system", "developer"):
            out.append(SystemMessage(content=_text_only(content, f"{where}.content"), **extra))
        elif role == "user":
            if content is None:
                raise bad_request(f"'{where}.content' is required.", f"{where}.content")
            out.append(HumanMessage(content=_content(content, f"{where}.content"), **extra))
        elif role == "assistant":
            text = _text_only(content, f"{where}.content")
            calls = _tool_calls(message.get("tool_calls"), where)
            call_ids.update(call["id"] for call in calls)
            out.append(AIMessage(content=text, tool_calls=calls, **extra))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not call_id:
                raise bad_request(
                    f"'{where}.tool_call_id' is required for role 'tool'.", f"{where}.tool_call_id"
                )
            if call_id not in call_ids:
                raise bad_request(
                    f"'{where}' with role 'tool' must answer a tool call of an earlier "
                    f"assistant message (no tool call has id {str(call_id)[:64]!r}).",
                    f"{where}.tool_call_id",
                )
            text = _text_only(content, f"{where}.content")
            out.append(ToolMessage(content=text, tool_call_id=call_id, **extra))
        elif role == "function":
            if not message.get("name"):
                raise bad_request(
                    f"'{where}.name' is required for role 'function'.", f"{where}.name"
                )
            text = _text_only(content, f"{where}.content")
            out.append(FunctionMessage(content=text, name=message["name"]))
        else:
            raise bad_request(
                f"Invalid value for '{where}.role': {role!r}. Supported roles: {', '.join(ROLES)}.",
                f"{where}.role",
            )
    return out


# --- LangChain output -> OpenAI ----------------------------------------------------


def content_text(content: Any) -> str:
    """Text of a message's content, string or content blocks (non-text blocks skipped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") in ("text", "output_text"):
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def as_chunk(output: Any) -> AIMessageChunk:
    """Whatever a runnable streamed (AIMessageChunk, AIMessage, str) -> AIMessageChunk."""
    if isinstance(output, AIMessageChunk):
        return output
    if isinstance(output, AIMessage):
        calls = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c.get("id"), "index": i}
            for i, c in enumerate(output.tool_calls)
        ]
        chunk = AIMessageChunk(
            content=output.content,
            tool_call_chunks=calls,
            usage_metadata=output.usage_metadata,
            response_metadata=output.response_metadata,
            id=output.id,
        )
        # Unparsed calls stay invalid and off the wire: as chunks, AIMessageChunk would
        # re-parse them (partial JSON, no name) into calls.
        chunk.invalid_tool_calls = list(output.invalid_tool_calls)
        return chunk
    if isinstance(output, BaseMessage):
        return AIMessageChunk(content=output.content)
    return AIMessageChunk(content=content_text(output) if isinstance(output, list) else str(output))


def _call_id(call_id: str | None) -> str:
    return call_id or f"call_{uuid.uuid4().hex[:24]}"


def tool_calls_to_openai(message: AIMessage | AIMessageChunk) -> list[ToolCall]:
    """AIMessage.tool_calls (args dicts) -> OpenAI tool calls (arguments JSON strings)."""
    calls = [
        ToolCall(
            id=_call_id(c.get("id")),
            function=ToolCallFunction(
                name=c["name"], arguments=json.dumps(c.get("args", {}), ensure_ascii=False)
            ),
        )
        for c in message.tool_calls
    ]
    # A call that did not parse (cut by max_tokens, bad JSON) is not a call: it never goes
    # out as one (an empty name breaks clients); message_to_openai keeps its text.
    return calls


def message_to_openai(message: AIMessage | AIMessageChunk) -> ChatMessage:
    calls = tool_calls_to_openai(message)
    text = content_text(message.content)
    if not calls and not text:  # only unusable calls: the partial text is the answer
        broken = getattr(message, "invalid_tool_calls", None) or []
        text = "\n".join(str(c.get("args") or "") for c in broken if c.get("args"))
    return ChatMessage(content=text if text or not calls else None, tool_calls=calls or None)


def tool_call_chunks_to_openai(chunk: AIMessageChunk) -> list[ToolCallDelta]:
    """Streamed tool_call_chunks -> OpenAI delta.tool_calls (index/id/name/arguments)."""
    out = []
    for position, tc in enumerate(chunk.tool_call_chunks):
        index = tc.get("index")
        first = bool(tc.get("id") or tc.get("name"))
        out.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else position,
                id=tc.get("id") or None,
                type="function" if first else None,
                function=ToolCallDeltaFunction(
                    name=tc.get("name") or None, arguments=tc.get("args") or ""
                ),
            )
        )
    return out


def chunk_to_delta(chunk: AIMessageChunk) -> DeltaMessage | None:
    """The delta to send for one chunk, or None when it carries no content or tool calls."""
    text = content_text(chunk.content)
    calls = tool_call_chunks_to_openai(chunk)
    if not text and not calls:
        return None
    return DeltaMessage(content=text or None, tool_calls=calls or None)


_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "function_call",
    # Other providers' names for the same things.
    "end_turn": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
    "STOP": "stop",
    "MAX_TOKENS": "length",
}


def raw_finish_reason(chunk: BaseMessage) -> str | None:
    meta = chunk.response_metadata or {}
    return meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")


def finish_reason(raw: str | None, has_tool_calls: bool = False, legacy: bool = False) -> str:
    """Our engines' and other providers' finish reasons -> OpenAI's.

    "cancelled" never reaches a client (the client is gone); unknown values read "stop".
    A message with tool calls that ended normally finished with "tool_calls". The legacy
    completions API has no "tool_calls".
    """
    reason = _FINISH.get(raw or "", "stop")
    if has_tool_calls and reason == "stop" and not legacy:
        reason = "tool_calls"
    if legacy and reason not in ("stop", "length", "content_filter"):
        reason = "stop"
    return reason


def usage_to_openai(usage: Mapping[str, Any] | None) -> UsageInfo:
    """LangChain usage_metadata -> OpenAI usage (zeros when the model reported none)."""
    if not usage:
        return UsageInfo()
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    total = int(usage.get("total_tokens") or prompt + completion)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def stop_list(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


__all__ = [
    "APIError",
    "as_chunk",
    "chunk_to_delta",
    "content_text",
    "finish_reason",
    "message_to_openai",
    "raw_finish_reason",
    "stop_list",
    "to_langchain_messages",
    "tool_call_chunks_to_openai",
    "tool_calls_to_openai",
    "usage_to_openai",
]
