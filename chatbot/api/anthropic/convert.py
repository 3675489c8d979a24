"""Anthropic Messages <-> the chat machinery. Pure functions and one builder, no I/O.

In:  `chat_request(body)`: a MessagesRequest -> the ChatCompletionRequest the chat route
     would get (system, text/image/tool_use/tool_result blocks, tools, tool_choice).
Out: `MessageBuilder`: AIMessageChunks -> Anthropic's stream events and the message
     object (a non-streamed answer is one chunk through the same builder).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessageChunk

from chatbot.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from chatbot.api.errors import bad_request
from chatbot.api.openai.convert import content_text, finish_reason, raw_finish_reason
from chatbot.api.openai.protocol import ChatCompletionRequest

# --- in ---------------------------------------------------------------------------------


def _text(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad_request(f"'{where}.text' must be a string.", f"{where}.text")
    return text


def _unsupported(kind: Any, where: str) -> Exception:
    return bad_request(
        f"'{where}.type': content block {kind!r} is not supported here.",
        f"{where}.type",
        code="unsupported_parameter",
    )


def system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    parts = []
    for i, block in enumerate(system):
        if block.get("type") != "text":
            raise _unsupported(block.get("type"), f"system[{i}]")
        parts.append(_text(block, f"system[{i}]"))
    return "\n".join(parts)


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = source.get("url")
    else:
        raise bad_request(f"'{where}.source' must be base64 or url.", f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"'{where}.tool_use_id' is required.", f"{where}.tool_use_id")
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if part.get("type") != "text":
                raise _unsupported(part.get("type"), f"{where}.content[{k}]")
            texts.append(_text(part, f"{where}.content[{k}]"))
        content = "\n".join(texts)
    text = content if isinstance(content, str) else ""
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def chat_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """Anthropic messages (+ system) -> chat-format messages."""
    out: list[dict[str, Any]] = []
    system = system_text(body.system)
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        where = f"messages[{i}].content"
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        if message.role == "assistant":
            texts, calls = [], []
            for j, block in enumerate(message.content):
                kind = block.get("type")
                if kind == "text":
                    texts.append(_text(block, f"{where}[{j}]"))
                elif kind == "tool_use":
                    calls.append(
                        {
                            "id": block.get("id"),
                            "type": "function",
                            "function": {
                                "name": block.get("name"),
                                "arguments": json.dumps(block.get("input") or {}),
                            },
                        }
                    )
                else:
                    raise _unsupported(kind, f"{where}[{j}]")
            turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
            continue
        parts: list[dict[str, Any]] = []
        for j, block in enumerate(message.content):
            kind = block.get("type")
            if kind == "tool_result":  # tool results answer the previous assistant turn
                out.append(_tool_result(block, f"{where}[{j}]"))
            elif kind == "text":
                parts.append({"type": "text", "text": _text(block, f"{where}[{j}]")})
            elif kind == "image":
                parts.append(_image(block, f"{where}[{j}]"))
            else:
                raise _unsupported(kind, f"{where}[{j}]")
        if parts:
            out.append({"role": "user", "content": parts})
    return out


def chat_tools(body: CountTokensRequest) -> list[dict[str, Any]] | None:
    if not body.tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "parameters": t.input_schema,
            },
        }
        for t in body.tools
    ]


def chat_tool_choice(body: CountTokensRequest) -> Any:
    choice = body.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise bad_request("'tool_choice.name' is required for type 'tool'.", "tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def chat_request(body: MessagesRequest) -> ChatCompletionRequest:
    choice = body.tool_choice
    fields = {
        "model": body.model,
        "messages": chat_messages(body),
        "max_tokens": body.max_tokens,
        "stop": body.stop_sequences or None,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "tools": chat_tools(body),
        "tool_choice": chat_tool_choice(body),
        "parallel_tool_calls": False if choice and choice.disable_parallel_tool_use else None,
        "user": body.metadata.user_id if body.metadata else None,
    }
    return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})


# --- out --------------------------------------------------------------------------------


def stop_reason(raw: str | None, has_calls: bool, stop_sequence: str | None) -> str:
    reason = finish_reason(raw, has_calls)
    if reason == "tool_calls":
        return "tool_use"
    if reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence else "end_turn"


class MessageBuilder:
    """One Anthropic message from the chat model's chunks, block by block, with the
    stream events in Anthropic's order."""

    def __init__(self, name: str) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.name = name
        self.blocks: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._args: dict[int, str] = {}  # tool_use input, as streamed JSON text
        self.tokens = [0, 0]
        self._raw: str | None = None
        self._stop_sequence: str | None = None
        self.stop_reason: str | None = None

    def message(self) -> dict[str, Any]:
        content = []
        for block in self.blocks:
            if block["type"] == "tool_use":
                content.append({**block, "input": _parse_input(block.pop("_json", None), block)})
            else:
                content.append(block)
        self.blocks = content
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.name,
            "content": content if self.stop_reason else [],
            "stop_reason": self.stop_reason,
            "stop_sequence": self._stop_sequence if self.stop_reason else None,
            "usage": {"input_tokens": self.tokens[0], "output_tokens": self.tokens[1]},
        }

    def start(self) -> list[dict[str, Any]]:
        return [{"type": "message_start", "message": self.message()}]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        index = self.blocks.index(self._open)
        self._open = None
        return [{"type": "content_block_stop", "index": index}]

    def _start(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.blocks.append(block)
        self._open = block
        start = {k: v for k, v in block.items() if not k.startswith("_")}
        if block["type"] == "tool_use":
            start["input"] = {}
        index = len(self.blocks) - 1
        return [*events, {"type": "content_block_start", "index": index, "content_block": start}]

    def feed(self, chunk: AIMessageChunk) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        usage = chunk.usage_metadata or {}
        self.tokens[0] += int(usage.get("input_tokens") or 0)
        self.tokens[1] += int(usage.get("output_tokens") or 0)
        self._raw = raw_finish_reason(chunk) or self._raw
        self._stop_sequence = chunk.response_metadata.get("stop_sequence") or self._stop_sequence
        text = content_text(chunk.content)
        if text:
            if self._open is None or self._open["type"] != "text":
                events += self._start({"type": "text", "text": ""})
            self._open["text"] += text  # type: ignore[index]
            delta = {"type": "text_delta", "text": text}
            events.append(
                {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}
            )
        for position, tc in enumerate(chunk.tool_call_chunks):
            index = tc.get("index")
            index = index if isinstance(index, int) else position
            block = self._calls.get(index)
            if block is None:
                block = {
                    "type": "tool_use",
                    "id": tc.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": tc.get("name") or "",
                    "_json": "",
                }
                self._calls[index] = block
                events += self._start(block)
            args = tc.get("args") or ""
            if args:
                block["_json"] += args
                delta = {"type": "input_json_delta", "partial_json": args}
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": self.blocks.index(block),
                        "delta": delta,
                    }
                )
        return events

    def finish(self) -> list[dict[str, Any]]:
        events = self._close()
        self.stop_reason = stop_reason(self._raw, bool(self._calls), self._stop_sequence)
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self._stop_sequence}
        usage = {"input_tokens": self.tokens[0], "output_tokens": self.tokens[1]}
        return [
            *events,
            {"type": "message_delta", "delta": delta, "usage": usage},
            {"type": "message_stop"},
        ]


def _parse_input(raw: str | None, block: dict[str, Any]) -> Any:
    if raw is None:
        return block.get("input", {})
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}  # a model that wrote broken JSON: Anthropic's input is always an object
    return value if isinstance(value, dict) else {}
