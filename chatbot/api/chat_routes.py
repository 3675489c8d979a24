"""POST /v1/chat/completions: every chat model through its LangChain interface."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable

from chatbot.api.convert import (
    as_chunk,
    chunk_to_delta,
    finish_reason,
    message_to_openai,
    raw_finish_reason,
    stop_list,
    to_langchain_messages,
    usage_to_openai,
)
from chatbot.api.errors import bad_request
from chatbot.api.metrics import RequestTracker
from chatbot.api.models import check_max_tokens, resolve_chat_model, supports_response_format
from chatbot.api.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    NamedToolChoice,
    UsageInfo,
    random_id,
)
from chatbot.api.runs import (
    Deadline,
    aclose_stream,
    app_state,
    default_name,
    first_output,
    gather_cancelling,
    generation_overrides,
    open_stream,
    outcome_of,
)
from chatbot.api.streaming import sse_response

router = APIRouter(tags=["openai"])  # included under /v1 by openai_routes


def bind_tools(model: Runnable, body: ChatCompletionRequest, name: str) -> tuple[Runnable, dict]:
    """Tools via bind_tools, response_format as an invoke kwarg; 400 when unsupported."""
    runnable: Runnable = model
    kwargs: dict[str, Any] = {}
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.model_dump(exclude_none=True)
    if body.tools:
        tools = [t.model_dump(exclude_none=True) for t in body.tools]
        bind = getattr(model, "bind_tools", None)
        try:
            if bind is None:
                raise NotImplementedError
            extra: dict[str, Any] = {}
            if choice is not None:
                extra["tool_choice"] = choice
            if body.parallel_tool_calls is not None:
                extra["parallel_tool_calls"] = body.parallel_tool_calls
            runnable = bind(tools, **extra)
        except NotImplementedError:
            raise bad_request(
                f"Model {name!r} does not support tool calling (tools) yet.",
                param="tools",
                code="tools_not_supported",
            ) from None
    elif choice not in (None, "none", "auto"):
        raise bad_request("'tool_choice' needs 'tools'.", param="tool_choice")
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_schema" and not fmt.json_schema:
            raise bad_request(
                "'response_format.json_schema' is required for type 'json_schema'.",
                param="response_format.json_schema",
            )
        if not supports_response_format(model):
            raise bad_request(
                f"Model {name!r} does not support response_format {fmt.type!r} yet.",
                param="response_format",
                code="response_format_not_supported",
            )
        kwargs["response_format"] = fmt.model_dump(exclude_none=True)
    return runnable, kwargs


# Plain text deltas are most stream events: their JSON is written directly (the same
# document `ChatCompletionStreamResponse` gives) instead of building and serialising
# three pydantic models per token on the hot path.
def stream_chunk_head(response_id: str, created: int, model: str) -> str:
    fields = {"id": response_id, "object": "chat.completion.chunk", "created": created}
    return json.dumps({**fields, "model": model}, ensure_ascii=False)[:-1] + ',"choices":'


def text_chunk_json(head: str, index: int, content: str) -> str:
    delta = json.dumps({"content": content}, ensure_ascii=False)
    return f'{head}[{{"index":{index},"delta":{delta},"logprobs":null,"finish_reason":null}}]}}'


@dataclass
class _Choice:
    message: AIMessageChunk
    raw_finish: str | None


async def _collect_choice(
    runnable: Runnable,
    messages: list[BaseMessage],
    stop: list[str] | None,
    kwargs: dict,
    deadline: Deadline,
    tracker: RequestTracker,
) -> _Choice:
    # One call, not a stream: a remote upstream then answers with one JSON body instead
    # of an SSE stream (cheaper to parse). Cancelling this task still stops a local
    # generation: the model's own stream is closed as the cancellation unwinds.
    if stop is not None:
        kwargs = {**kwargs, "stop": stop}
    message = as_chunk(await deadline.run(runnable.ainvoke(messages, **kwargs)))
    tracker.first_token()
    return _Choice(message, raw_finish_reason(message))


def _sum_usage(usages: list[UsageInfo]) -> UsageInfo:
    """n choices of one prompt: the prompt counts once, completions add up."""
    prompt = max((u.prompt_tokens for u in usages), default=0)
    completion = sum(u.completion_tokens for u in usages)
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = app_state(request)
    if body.logprobs:
        raise bad_request("logprobs are not supported by this server.", param="logprobs")
    messages = to_langchain_messages([m.model_dump(exclude_none=True) for m in body.messages])
    name = default_name(body.model)
    max_tokens = body.max_completion_tokens or body.max_tokens
    overrides = generation_overrides(body.temperature, body.top_p, max_tokens, body.seed)
    model = await resolve_chat_model(body.model, state.settings, **overrides)
    check_max_tokens(
        name, max_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    )
    runnable, kwargs = bind_tools(model, body, name)
    stop = stop_list(body.stop)
    n = body.n or 1
    deadline = Deadline(state.settings.request_timeout)
    tracker = state.metrics.track(name, "chat")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:
        return await _stream_chat(
            runnable, messages, stop, kwargs, n, name, include_usage, deadline, tracker
        )
    try:
        results = await gather_cancelling(
            [_collect_choice(runnable, messages, stop, kwargs, deadline, tracker) for _ in range(n)]
        )
    except BaseException as exc:
        tracker.finish(outcome_of(exc))
        raise
    usage = _sum_usage([usage_to_openai(r.message.usage_metadata) for r in results])
    tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
    tracker.finish("ok")
    choices = []
    for i, r in enumerate(results):
        has_calls = bool(r.message.tool_calls)
        choices.append(
            ChatCompletionChoice(
                index=i,
                message=message_to_openai(r.message),
                finish_reason=finish_reason(r.raw_finish, has_calls),
            )
        )
    # RAG models ("rag:<kb>") say which passages they used: an extra `sources` field.
    sources = results[0].message.response_metadata.get("sources")
    extra = {"sources": sources} if sources is not None else {}
    return ChatCompletionResponse(model=name, choices=choices, usage=usage, **extra)


async def _stream_chat(
    runnable: Runnable,
    messages: list[BaseMessage],
    stop: list[str] | None,
    kwargs: dict,
    n: int,
    name: str,
    include_usage: bool,
    deadline: Deadline,
    tracker: RequestTracker,
) -> Any:
    first_stream = open_stream(runnable, messages, stop, kwargs)
    first: Any = await first_output(first_stream, deadline, tracker)

    response_id = random_id("chatcmpl")
    created = int(time.time())

    def frame(index: int, delta: DeltaMessage, finish: str | None = None) -> Any:
        choice = ChatCompletionStreamChoice(index=index, delta=delta, finish_reason=finish)
        return ChatCompletionStreamResponse(
            id=response_id, created=created, model=name, choices=[choice]
        )

    head = stream_chunk_head(response_id, created, name)

    def text_frame(index: int, delta: DeltaMessage) -> Any:
        if delta.tool_calls is not None or delta.role is not None or delta.content is None:
            return frame(index, delta)
        return text_chunk_json(head, index, delta.content)

    async def payloads() -> AsyncIterator[Any]:
        usages: list[UsageInfo] = []
        outcome = "error"
        try:
            for index in range(n):
                if index == 0:
                    stream = first_stream
                else:
                    stream = open_stream(runnable, messages, stop, kwargs)
                pending = [first] if index == 0 and first is not None else []
                raw: str | None = None
                has_calls = False
                usage: dict[str, int] = {}
                yield frame(index, DeltaMessage(role="assistant", content=""))
                try:
                    while True:
                        if pending:
                            out = pending.pop()
                        else:
                            try:
                                out = await deadline.next(stream)
                            except StopAsyncIteration:
                                break
                        chunk = as_chunk(out)
                        if chunk.response_metadata.get("sources") is not None:
                            yield ChatCompletionStreamResponse(  # RAG: sources first
                                id=response_id,
                                created=created,
                                model=name,
                                choices=[],
                                sources=chunk.response_metadata["sources"],
                            )
                        raw = raw_finish_reason(chunk) or raw
                        for key, value in (chunk.usage_metadata or {}).items():
                            if isinstance(value, int):
                                usage[key] = usage.get(key, 0) + value
                        delta = chunk_to_delta(chunk)
                        if delta is not None:
                            tracker.first_token()
                            has_calls = has_calls or bool(delta.tool_calls)
                            yield text_frame(index, delta)
                finally:
                    await aclose_stream(stream)
                usages.append(usage_to_openai(usage))
                yield frame(index, DeltaMessage(), finish_reason(raw, has_calls))
            total = _sum_usage(usages)
            tracker.tokens(total.prompt_tokens, total.completion_tokens)
            if include_usage:
                yield ChatCompletionStreamResponse(
                    id=response_id, created=created, model=name, choices=[], usage=total
                )
            outcome = "ok"
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            tracker.finish(outcome)

    return sse_response(payloads(), close=[first_stream])
