"""Request and response models of the OpenAI-compatible API (after vLLM's protocol.py).

Requests accept unknown fields (clients send many we don't use) and validate the ones
we honour. Responses serialise exactly as OpenAI frames them: fields OpenAI always
sends (even as null) are always present, optional ones are left out when unset.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from chatbot.api.openai.checks import check_stop, refuse_unsupported, schema_size_error


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _generation(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class OpenAIRequest(BaseModel):
    """Unknown fields are accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="allow")


class OpenAIResponse(BaseModel):
    """Fields named in `_omit_if_none` are dropped from the JSON when None."""

    model_config = ConfigDict(extra="allow")
    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in self._omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


# --- chat completions: request -------------------------------------------------------


class StreamOptions(OpenAIRequest):
    include_usage: bool | None = False


class FunctionCall(OpenAIRequest):
    name: str
    arguments: str = "{}"


class ToolCallParam(OpenAIRequest):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageParam(OpenAIRequest):
    """One input message. Roles are checked by chatbot.api.openai.convert (400 naming the field)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(OpenAIRequest):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(OpenAIRequest):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoice(OpenAIRequest):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ResponseFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(OpenAIRequest):
    model: str | None = Field(None, description="Registry name; default: default_model.")
    messages: list[ChatMessageParam] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch takes int64
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # vLLM's extra sampling fields (chatbot.api.sampling says which model takes which).
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)

    def sampling(self) -> dict[str, Any]:
        """The sampling fields beyond temperature/top_p (see chatbot.api.sampling)."""
        refuse_unsupported(self)
        names = ("presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p")
        values = {k: getattr(self, k) for k in (*names, "repetition_penalty")}
        return {**values, "logprobs": self.logprobs, "top_logprobs": self.top_logprobs}

    _stop_is_text = field_validator("stop")(check_stop)

    @field_validator("tools")
    @classmethod
    def _tools_size(cls, tools: list[ToolParam] | None) -> list[ToolParam] | None:
        error = schema_size_error([t.function.parameters for t in tools or []])
        if error:
            raise ValueError(f"tools are too large: {error}")
        return tools

    @field_validator("response_format")
    @classmethod
    def _format_size(cls, fmt: ResponseFormat | None) -> ResponseFormat | None:
        error = schema_size_error([fmt.json_schema]) if fmt and fmt.json_schema else None
        if error:
            raise ValueError(f"response_format is too large: {error}")
        return fmt

    # The request owns its mapping to model parameters (like vLLM's to_sampling_params).
    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def generation_overrides(self) -> dict[str, Any]:
        """Chat-model overrides (temperature, top_p, max_tokens, seed) the client set."""
        max_tokens = self.max_completion_tokens or self.max_tokens
        return _generation(
            temperature=self.temperature, top_p=self.top_p, max_tokens=max_tokens, seed=self.seed
        )

    def stop_sequences(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --- chat completions: response ------------------------------------------------------


class UsageInfo(OpenAIResponse):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ToolCallFunction(OpenAIResponse):
    name: str
    arguments: str


class ToolCall(OpenAIResponse):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(OpenAIResponse):
    _omit_if_none = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatCompletionChoice(OpenAIResponse):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str


class ChatCompletionResponse(OpenAIResponse):
    _omit_if_none = frozenset({"system_fingerprint"})

    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class ToolCallDeltaFunction(OpenAIResponse):
    _omit_if_none = frozenset({"name", "arguments"})

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(OpenAIResponse):
    _omit_if_none = frozenset({"id", "type", "function"})

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class DeltaMessage(OpenAIResponse):
    _omit_if_none = frozenset({"role", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatCompletionStreamChoice(OpenAIResponse):
    index: int
    delta: DeltaMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(OpenAIResponse):
    _omit_if_none = frozenset({"usage"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


# --- legacy completions ----------------------------------------------------------------


class CompletionRequest(OpenAIRequest):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(1, ge=1, le=16)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch takes int64
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1)
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)

    def sampling(self) -> dict[str, Any]:
        refuse_unsupported(self)
        names = ("presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p")
        return {k: getattr(self, k) for k in (*names, "repetition_penalty")}

    _stop_is_text = field_validator("stop")(check_stop)

    max_tokens_param: ClassVar[str] = "max_tokens"

    def generation_overrides(self) -> dict[str, Any]:
        return _generation(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def stop_sequences(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionChoice(OpenAIResponse):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class CompletionResponse(OpenAIResponse):
    _omit_if_none = frozenset({"usage"})

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# --- embeddings ------------------------------------------------------------------------


class EmbeddingRequest(OpenAIRequest):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class EmbeddingData(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(OpenAIResponse):
    object: Literal["list"] = "list"
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


# --- models ------------------------------------------------------------------------------


class ModelCard(OpenAIResponse):
    """OpenAI's model object plus our fields about the entry (kind, engine, ...)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatbot"


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
