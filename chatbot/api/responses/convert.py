"""Responses API requests -> the chat machinery. Pure functions, no I/O.

`chat_request(body, history)`: a ResponsesRequest (plus the stored conversation it
continues) -> the ChatCompletionRequest the chat route would get, and the conversation
(chat-format messages) to store with the answer. The way out is
chatbot.api.responses.builder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatbot.api.errors import bad_request
from chatbot.api.openai.protocol import ChatCompletionRequest
from chatbot.api.responses.protocol import LOGPROBS_INCLUDE, ResponsesRequest

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


# --- in: input items -> chat messages ------------------------------------------------


def _parts(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or an array of content parts.", where)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in TEXT_PARTS:
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise bad_request(f"'{here}.text' must be a string.", f"{here}.text")
            out.append({"type": "text", "text": text})
        elif kind == "input_image" and role == "user":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise bad_request(
                    f"'{here}.image_url' is required (file ids are not supported).",
                    f"{here}.image_url",
                )
            out.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise bad_request(
                f"'{here}.type': content part {kind!r} is not supported here.", f"{here}.type"
            )
    if role != "user":  # system/developer/assistant take text only
        return "".join(p["text"] for p in out)
    return out


def _output_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return str(_parts(value, where, "tool"))
    raise bad_request(f"'{where}' must be a string or an array of content parts.", where)


def _required(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"'{where}.{key}' is required.", f"{where}.{key}")
    return value


def input_messages(items: str | list[Any], where: str = "input") -> list[dict[str, Any]]:
    """Input items (or a stored response's output items) -> chat-format messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise bad_request(f"'{here}' must be an object.", here)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise bad_request(
                    f"Invalid value for '{here}.role': {role!r} (one of {', '.join(ROLES)}).",
                    f"{here}.role",
                )
            content = _parts(item.get("content"), f"{here}.content", role)
            out.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": _required(item, "call_id", here),
                "type": "function",
                "function": {
                    "name": _required(item, "name", here),
                    "arguments": item.get("arguments") or "{}",
                },
            }
            if out and out[-1]["role"] == "assistant":  # one assistant turn: text + calls
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": _required(item, "call_id", here),
                    "content": _output_text(item.get("output"), f"{here}.output"),
                }
            )
        else:
            raise bad_request(
                f"'{here}.type': input item type {kind!r} is not supported here "
                "(message, function_call, function_call_output).",
                f"{here}.type",
                code="unsupported_parameter",
            )
    return out


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise bad_request(
                f"'tools[{i}].type': tool type {kind!r} is not supported here (built-in tools "
                "such as web search and file search are not; function tools are).",
                f"tools[{i}].type",
                code="unsupported_parameter",
            )
        function = {"name": _required(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _required(choice, "name", "tool_choice")}}
    raise bad_request(
        f"'tool_choice' {choice!r} is not supported here ('none', 'auto', 'required' or "
        "{'type': 'function', 'name': ...}).",
        "tool_choice",
        code="unsupported_parameter",
    )


def chat_response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None or not fmt.name:
        raise bad_request(
            "'text.format' of type 'json_schema' needs 'name' and 'schema'.", "text.format.schema"
        )
    schema = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def wants_logprobs(body: ResponsesRequest) -> bool:
    return LOGPROBS_INCLUDE in (body.include or []) or bool(body.top_logprobs)


def chat_request(
    body: ResponsesRequest, history: list[dict[str, Any]]
) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """The chat request for `body`, and the conversation to store (without instructions)."""
    conversation = history + (input_messages(body.input) if body.input is not None else [])
    if not conversation:
        raise bad_request("'input' must not be empty.", param="input")
    messages = conversation
    if body.instructions:
        messages = [{"role": "system", "content": body.instructions}, *conversation]
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_completion_tokens": body.max_output_tokens,
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": chat_response_format(body),
        "seed": body.seed,
        "user": body.user,
    }
    for name in ("presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p"):
        fields[name] = getattr(body, name)
    fields["repetition_penalty"] = body.repetition_penalty
    if wants_logprobs(body):
        fields["logprobs"] = True
        fields["top_logprobs"] = body.top_logprobs or 0
    chat = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    return chat, conversation
