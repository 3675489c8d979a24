"""Request models of Anthropic's Messages API, and its error JSON.

Fields we do not know, and features we cannot honour (extended thinking, server
tools, MCP servers, containers), are a 400 naming the field. Content blocks stay
dicts: chatbot.api.anthropic.convert checks each by type.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from chatbot.api.errors import APIError, bad_request


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None  # server tools (bash, web_search...): refused
    cache_control: dict[str, Any] | None = None  # a caching hint: no effect here


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["disabled"]  # no thinking models here


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = False
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None


def check_supported(body: CountTokensRequest) -> None:
    for name in body.model_extra or {}:
        raise bad_request(
            f"Unsupported field {name!r} for /v1/messages.",
            param=name,
            code="unsupported_parameter",
        )


# --- errors -----------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(api: APIError) -> dict[str, Any]:
    """Anthropic's error JSON for an APIError (the field a 400 names goes in the text)."""
    kind = _TYPES.get(api.status, "api_error" if api.status >= 500 else "invalid_request_error")
    message = api.message
    if api.param and api.param not in message:
        message = f"{api.param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def stream_end(api: APIError, events_sent: int = 0) -> bytes:
    """A Messages stream cut short (e.g. at shutdown): Anthropic's `error` event ends it."""
    return f"event: error\ndata: {json.dumps(error_body(api))}\n\n".encode()


def error_response(api: APIError) -> JSONResponse:
    return JSONResponse(error_body(api), status_code=api.status, headers=api.headers)
