"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models,
/v1/models/{id}, /v1/embeddings.

Every chat model is driven through its LangChain interface (`astream`); the legacy
completions API drives local models from the raw prompt. Errors that happen before the
first token (unknown model, prompt too long, queue full, ...) are HTTP errors; later
ones end the stream with an error event (chatbot.api.streaming).
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable

from chatbot import factory
from chatbot.api.convert import (
    as_chunk,
    chunk_to_delta,
    content_text,
    finish_reason,
    message_to_openai,
    raw_finish_reason,
    stop_list,
    to_langchain_messages,
    usage_to_openai,
)
from chatbot.api.errors import APIError, bad_request, model_not_found
from chatbot.api.metrics import RequestTracker
from chatbot.api.models import (
    model_card,
    resolve_chat_model,
    resolve_embeddings,
    supports_response_format,
)
from chatbot.api.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    NamedToolChoice,
    UsageInfo,
    random_id,
)
from chatbot.api.streaming import sse_response

router = APIRouter(prefix="/v1", tags=["openai"])


def _state(request: Request) -> Any:
    return request.app.state.chatbot


# --- helpers -------------------------------------------------------------------------


class Deadline:
    """The request's deadline (settings.request_timeout); `next` awaits one item."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    async def next(self, stream: AsyncIterator[Any]) -> Any:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            return await asyncio.wait_for(stream.__anext__(), remaining)
        except asyncio.TimeoutError:  # a distinct class before Python 3.11
            raise TimeoutError from None

    async def run(self, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, max(0.0, self.at - time.monotonic()))
        except asyncio.TimeoutError:
            raise TimeoutError from None


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _gather(coros: list[Any]) -> list[Any]:
    """Run coroutines concurrently; if one fails or we are cancelled, cancel the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _overrides(
    temperature: float | None, top_p: float | None, max_tokens: int | None, seed: int | None
) -> dict[str, Any]:
    values = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    return {k: v for k, v in values.items() if v is not None}


def _outcome(exc: BaseException) -> str:
    return "cancelled" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else "error"


def _default_name(name: str | None, kind: str = "chat") -> str:
    if name:
        return name
    registry = factory.get_registry()
    return (registry.default_model if kind == "chat" else registry.default_embeddings) or ""


def _open(
    runnable: Runnable, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict
) -> AsyncIterator[Any]:
    if stop is not None:
        kwargs = {**kwargs, "stop": stop}
    return runnable.astream(messages, **kwargs)


# --- /v1/models --------------------------------------------------------------------


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    created = _state(request).created
    cards = [model_card(e, created) for e in factory.get_registry().served()]
    return {"object": "list", "data": cards}


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    registry = factory.get_registry()
    entry = registry.entries.get(model_id)
    if entry is None or model_id not in registry.serve:
        raise model_not_found(model_id)
    return model_card(entry, _state(request).created)


# --- /v1/chat/completions ----------------------------------------------------------


def _bind_tools(model: Runnable, body: ChatCompletionRequest, name: str) -> tuple[Runnable, dict]:
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
            runnable = bind(tools, tool_choice=choice) if choice is not None else bind(tools)
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
    stream = _open(runnable, messages, stop, kwargs)
    merged: AIMessageChunk | None = None
    raw: str | None = None
    try:
        while True:
            try:
                chunk = as_chunk(await deadline.next(stream))
            except StopAsyncIteration:
                break
            if chunk.content or chunk.tool_call_chunks:
                tracker.first_token()
            raw = raw_finish_reason(chunk) or raw
            merged = chunk if merged is None else merged + chunk
    finally:
        await _aclose(stream)
    return _Choice(merged if merged is not None else AIMessageChunk(content=""), raw)


def _sum_usage(usages: list[UsageInfo]) -> UsageInfo:
    """n choices of one prompt: the prompt counts once, completions add up."""
    prompt = max((u.prompt_tokens for u in usages), default=0)
    completion = sum(u.completion_tokens for u in usages)
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = _state(request)
    if body.logprobs:
        raise bad_request("logprobs are not supported by this server.", param="logprobs")
    messages = to_langchain_messages([m.model_dump(exclude_none=True) for m in body.messages])
    name = _default_name(body.model)
    max_tokens = body.max_completion_tokens or body.max_tokens
    overrides = _overrides(body.temperature, body.top_p, max_tokens, body.seed)
    model = await resolve_chat_model(body.model, state.settings, **overrides)
    runnable, kwargs = _bind_tools(model, body, name)
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
        results = await _gather(
            [_collect_choice(runnable, messages, stop, kwargs, deadline, tracker) for _ in range(n)]
        )
    except BaseException as exc:
        tracker.finish(_outcome(exc))
        raise
    usage = _sum_usage([usage_to_openai(r.message.usage_metadata) for r in results])
    tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
    tracker.finish("ok")
    choices = []
    for i, r in enumerate(results):
        has_calls = bool(r.message.tool_calls or r.message.invalid_tool_calls)
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
    first_stream = _open(runnable, messages, stop, kwargs)
    # Wait for the first output before answering, so that errors raised before any
    # token (prompt too long, queue full, bad content) get their own HTTP status.
    try:
        first: Any = await deadline.next(first_stream)
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        await _aclose(first_stream)
        tracker.finish(_outcome(exc))
        raise

    response_id = random_id("chatcmpl")
    created = int(time.time())

    def frame(index: int, delta: DeltaMessage, finish: str | None = None) -> Any:
        choice = ChatCompletionStreamChoice(index=index, delta=delta, finish_reason=finish)
        return ChatCompletionStreamResponse(
            id=response_id, created=created, model=name, choices=[choice]
        )

    async def payloads() -> AsyncIterator[Any]:
        usages: list[UsageInfo] = []
        outcome = "error"
        try:
            for index in range(n):
                stream = first_stream if index == 0 else _open(runnable, messages, stop, kwargs)
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
                                id=response_id, created=created, model=name, choices=[],
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
                            yield frame(index, delta)
                finally:
                    await _aclose(stream)
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
            outcome = _outcome(exc)
            raise
        finally:
            tracker.finish(outcome)

    return sse_response(payloads())


# --- /v1/completions (legacy) ------------------------------------------------------


@dataclass
class _Piece:
    text: str = ""
    raw_finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _is_local(model: Any) -> bool:
    from model_adapters.local_chat import ChatLocal

    return isinstance(model, ChatLocal)


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


async def _raw_pieces(model: Any, prompt: str | list[int], stop: list[str] | None) -> Any:
    """Local model: generate straight from the prompt text, no chat template."""
    from model_adapters.generation import stream_async
    from model_adapters.prompting import encode

    tokenizer = model.runtime.tokenizer
    ids = list(prompt) if isinstance(prompt, list) else encode(tokenizer, prompt)
    if not ids:
        raise bad_request("'prompt' must not be empty.", param="prompt")
    if min(ids) < 0 or max(ids) >= len(tokenizer):
        raise bad_request(f"'prompt' has token ids outside 0..{len(tokenizer) - 1}.", "prompt")
    request = model.request_for_prompt(ids, stop)
    async for delta in stream_async(model.runtime.submit, request):
        yield _Piece(delta.text, delta.finish_reason, delta.prompt_tokens, delta.completion_tokens)


async def _chat_pieces(runnable: Runnable, prompt: str, stop: list[str] | None) -> Any:
    """Other models: the prompt is one user message."""
    async for out in _open(runnable, [HumanMessage(content=prompt)], stop, {}):
        chunk = as_chunk(out)
        usage = chunk.usage_metadata or {}
        yield _Piece(
            content_text(chunk.content),
            raw_finish_reason(chunk),
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )


def _decode(model: Any, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return model.runtime.tokenizer.decode(prompt, skip_special_tokens=False)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = _state(request)
    n = body.n or 1
    if body.suffix:
        raise bad_request("'suffix' is not supported by this server.", param="suffix")
    if body.logprobs:
        raise bad_request("logprobs are not supported by this server.", param="logprobs")
    if body.best_of not in (None, 1, n):
        raise bad_request("'best_of' other than n is not supported.", param="best_of")
    prompts = _prompts(body.prompt)
    name = _default_name(body.model)
    overrides = _overrides(body.temperature, body.top_p, body.max_tokens, body.seed)
    model = await resolve_chat_model(body.model, state.settings, **overrides)
    local = _is_local(model)
    if not local and any(not isinstance(p, str) for p in prompts):
        raise bad_request(f"Model {name!r} takes text prompts, not token ids.", param="prompt")
    stop = stop_list(body.stop)
    deadline = Deadline(state.settings.request_timeout)
    tracker = state.metrics.track(name, "completions")

    def pieces(prompt: str | list[int]) -> AsyncIterator[_Piece]:
        if local:
            return _raw_pieces(model, prompt, stop)
        return _chat_pieces(model, prompt, stop)  # type: ignore[arg-type]

    jobs = [(i * n + j, p) for i, p in enumerate(prompts) for j in range(n)]
    echo = {index: _decode(model, p) if local else str(p) for index, p in jobs} if body.echo else {}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream_completion(
            jobs, pieces, echo, name, include_usage, deadline, tracker, n
        )

    async def collect(prompt: str | list[int]) -> _Piece:
        stream = pieces(prompt)
        out = _Piece()
        try:
            while True:
                try:
                    piece = await deadline.next(stream)
                except StopAsyncIteration:
                    break
                if piece.text:
                    tracker.first_token()
                out.text += piece.text
                out.raw_finish = piece.raw_finish or out.raw_finish
                out.prompt_tokens = max(out.prompt_tokens, piece.prompt_tokens)
                out.completion_tokens += piece.completion_tokens
        finally:
            await _aclose(stream)
        return out

    try:
        results = await _gather([collect(p) for _, p in jobs])
    except BaseException as exc:
        tracker.finish(_outcome(exc))
        raise
    usage = _completion_usage(results, n)
    tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
    tracker.finish("ok")
    choices = [
        CompletionChoice(
            index=index,
            text=echo.get(index, "") + r.text,
            finish_reason=finish_reason(r.raw_finish, legacy=True),
        )
        for (index, _), r in zip(jobs, results, strict=True)
    ]
    return CompletionResponse(
        id=random_id("cmpl"), created=int(time.time()), model=name, choices=choices, usage=usage
    )


def _completion_usage(pieces: list[_Piece], n: int) -> UsageInfo:
    # Each prompt counts once; each of its n completions adds up.
    prompt = sum(p.prompt_tokens for i, p in enumerate(pieces) if i % n == 0)
    completion = sum(p.completion_tokens for p in pieces)
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


async def _stream_completion(
    jobs: list[tuple[int, str | list[int]]],
    pieces: Any,
    echo: dict[int, str],
    name: str,
    include_usage: bool,
    deadline: Deadline,
    tracker: RequestTracker,
    n: int,
) -> Any:
    first_stream = pieces(jobs[0][1])
    try:
        first: Any = await deadline.next(first_stream)
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        await _aclose(first_stream)
        tracker.finish(_outcome(exc))
        raise
    response_id = random_id("cmpl")
    created = int(time.time())

    def frame(index: int, text: str, finish: str | None = None) -> CompletionResponse:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish)
        return CompletionResponse(id=response_id, created=created, model=name, choices=[choice])

    async def payloads() -> AsyncIterator[Any]:
        totals: list[_Piece] = []
        outcome = "error"
        try:
            for position, (index, prompt) in enumerate(jobs):
                stream = first_stream if position == 0 else pieces(prompt)
                pending = [first] if position == 0 and first is not None else []
                total = _Piece()
                if echo.get(index):
                    yield frame(index, echo[index])
                try:
                    while True:
                        if pending:
                            piece = pending.pop()
                        else:
                            try:
                                piece = await deadline.next(stream)
                            except StopAsyncIteration:
                                break
                        total.raw_finish = piece.raw_finish or total.raw_finish
                        total.prompt_tokens = max(total.prompt_tokens, piece.prompt_tokens)
                        total.completion_tokens += piece.completion_tokens
                        if piece.text:
                            tracker.first_token()
                            yield frame(index, piece.text)
                finally:
                    await _aclose(stream)
                totals.append(total)
                yield frame(index, "", finish_reason(total.raw_finish, legacy=True))
            usage = _completion_usage(totals, n)
            tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
            if include_usage:
                yield CompletionResponse(
                    id=response_id, created=created, model=name, choices=[], usage=usage
                )
            outcome = "ok"
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            tracker.finish(outcome)

    return sse_response(payloads())


# --- /v1/embeddings ----------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise bad_request("'input' must not be empty.", param="input")
    if not all(isinstance(v, str) for v in value):
        raise bad_request(
            "'input' must be a string or an array of strings (token ids are not supported).",
            param="input",
        )
    return list(value)


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    state = _state(request)
    texts = _texts(body.input)
    model = await resolve_embeddings(body.model, state.settings)
    name = _default_name(body.model, "embeddings")
    tracker = state.metrics.track(name, "embeddings")
    deadline = Deadline(state.settings.request_timeout)
    try:
        vectors = await deadline.run(model.aembed_documents(texts))
        count = getattr(model, "count_tokens", None)
        tokens = int(await asyncio.to_thread(count, texts)) if callable(count) else 0
    except BaseException as exc:
        tracker.finish(_outcome(exc))
        raise
    tracker.tokens(tokens, 0)
    tracker.finish("ok")
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise APIError(
            400,
            f"Model {name!r} makes {len(vectors[0])}-dimensional embeddings; other "
            "'dimensions' are not supported.",
            param="dimensions",
        )
    as_base64 = body.encoding_format == "base64"
    data = [
        EmbeddingData(index=i, embedding=_base64(v) if as_base64 else list(v))
        for i, v in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingResponse(model=name, data=data, usage=usage)
