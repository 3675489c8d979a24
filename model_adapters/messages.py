"""LangChain messages -> the role/content dicts that chat templates take. Pure functions."""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)


class UnsupportedContentError(ValueError):
    """Message content this model cannot take (e.g. an image sent to a text-only model)."""


def content_text(content: str | list[Any]) -> str:
    """Flatten string or content-part content to text; non-text parts are an error."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") in ("tool_use", "reasoning"):
            continue  # carried separately (tool_calls) or not sent back to the model
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise UnsupportedContentError(f"content part of type {kind!r} is not supported")
    return "".join(parts)


def tool_call_dict(call: dict[str, Any]) -> dict[str, Any]:
    """LangChain ToolCall -> OpenAI-style tool call (arguments as an object for templates)."""
    return {
        "id": call.get("id") or "",
        "type": "function",
        "function": {"name": call["name"], "arguments": call.get("args", {})},
    }


def message_dict(message: BaseMessage) -> dict[str, Any]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": content_text(message.content)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": content_text(message.content)}
    if isinstance(message, AIMessage):
        out: dict[str, Any] = {"role": "assistant", "content": content_text(message.content)}
        if message.tool_calls:
            out["tool_calls"] = [tool_call_dict(c) for c in message.tool_calls]
        return out
    if isinstance(message, ToolMessage):
        content = message.content
        text = content if isinstance(content, str) else json.dumps(content)
        return {"role": "tool", "content": text, "tool_call_id": message.tool_call_id}
    if isinstance(message, FunctionMessage):
        return {"role": "tool", "content": content_text(message.content), "name": message.name}
    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": content_text(message.content)}
    raise TypeError(f"unsupported message type {type(message).__name__}")


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    return [message_dict(m) for m in messages]


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates without a system role: prepend system text to the next user turn."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            pending.append(message["content"])
            continue
        if pending and message["role"] == "user":
            message = {**message, "content": "\n\n".join([*pending, message["content"]])}
            pending = []
        out.append(message)
    if pending:
        out.insert(0, {"role": "user", "content": "\n\n".join(pending)})
    return out


def fold_tools(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates without tool roles: tool calls and results become plain text turns."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            out.append({"role": "user", "content": f"Tool result: {message['content']}"})
        elif message.get("tool_calls"):
            # Prose, not the call format: shown a bare JSON call as its last turn, a small
            # model repeats it instead of answering from the result (seen on SmolLM2-135M).
            calls = ", ".join(
                f"{c['function']['name']}({json.dumps(c['function']['arguments'])})"
                for c in message["tool_calls"]
            )
            text = "\n".join([message["content"], f"I called {calls}."]).strip()
            out.append({"role": "assistant", "content": text})
        else:
            out.append(message)
    return out
