"""Request model of POST /v1/responses (OpenAI's `CreateResponse`, the parts we serve).

Fields we do not know, and values we cannot honour (built-in tools, background runs,
conversations, reasoning effort), are a 400 naming the field; `unsupported` finds them.
Items of `input` stay plain dicts: chatbot.api.responses.convert checks each by type.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatbot.api.errors import APIError, bad_request


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one a local model "has"


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: None = None  # no reasoning models here: any effort is refused
    summary: None = None
    generate_summary: None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    truncation: Literal["disabled"] | None = None  # "auto" would drop input silently
    reasoning: Reasoning | None = None
    background: Literal[False] | None = None
    max_tool_calls: int | None = Field(None, ge=1)  # counts built-in tool calls: none here
    seed: int | None = None
    # Identifiers the server does not act on: accepted (they don't change the output).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    # vLLM's extra sampling fields (chatbot.api.sampling says which model takes which).
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)


LOGPROBS_INCLUDE = "message.output_text.logprobs"


def check_supported(body: ResponsesRequest) -> None:
    """400 naming the first field this server cannot honour."""
    for name in body.model_extra or {}:
        raise bad_request(
            f"Unsupported field {name!r} for /v1/responses.",
            param=name,
            code="unsupported_parameter",
        )
    for i, item in enumerate(body.include or []):
        if item != LOGPROBS_INCLUDE:
            raise bad_request(
                f"'include[{i}]': {item!r} is not supported (only {LOGPROBS_INCLUDE!r}).",
                param=f"include[{i}]",
                code="unsupported_parameter",
            )
    if body.input is None and body.previous_response_id is None:
        raise bad_request("'input' is required.", param="input")


def not_found(response_id: str) -> APIError:
    return APIError(
        404,
        f"No response with id {response_id[:80]!r} is stored here.",
        param="response_id",
        code="not_found",
    )


def stream_end(api: APIError, events_sent: int) -> bytes:
    """A Responses stream cut short (e.g. at shutdown): the spec's `error` event, numbered
    after the events already sent (they count from 0)."""
    event = {"type": "error", "code": api.code, "message": api.message, "param": api.param}
    event["sequence_number"] = events_sent
    return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
