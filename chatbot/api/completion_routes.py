"""POST /v1/completions, the legacy prompt API (openai 0.28's `Completion.create`).

Local models generate straight from the raw prompt (no chat template); other models get
the prompt as one user message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from langchain_core.messages import HumanMessage
from langchain_core.runnables import Runnable

from chatbot.api.convert import (
    as_chunk,
    content_text,
    finish_reason,
    raw_finish_reason,
    stop_list,
)
from chatbot.api.errors import bad_request
from chatbot.api.metrics import RequestTracker
from chatbot.api.models import check_max_tokens, resolve_chat_model
from chatbot.api.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
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
from chatbot.api.sampling import sampling_kwargs
from chatbot.api.streaming import sse_response

router = APIRouter(tags=["openai"])  # included under /v1 by openai_routes


@dataclass
class _Piece:
    text: str = ""
    raw_finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Legacy logprobs: (token text, logprob or None, {token: logprob} or None) per token.
    logprobs: list[tuple[str, float | None, dict[str, float] | None]] | None = None
    is_prompt: bool = False  # echo with logprobs: the prompt's tokens


def _legacy_entries(tokenizer: Any, entries: list[Any]) -> list[tuple]:
    """TokenLogprobs -> legacy logprobs entries (token text, logprob, top)."""

    def text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False)

    return [(text(e.token_id), e.logprob, {text(t): lp for t, lp in e.top}) for e in entries]


def _legacy_logprobs(entries: list[tuple] | None, offset: int) -> dict[str, Any] | None:
    """OpenAI's legacy `logprobs` object; `offset`: where the text of the first token starts
    in the choice's text."""
    if entries is None:
        return None
    offsets = []
    for token, _, _ in entries:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": [t for t, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [top for _, _, top in entries],
        "text_offset": offsets,
    }


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


async def _raw_pieces(
    model: Any, prompt: str | list[int], stop: list[str] | None, sampling: dict[str, Any]
) -> Any:
    """Local model: generate straight from the prompt text, no chat template."""
    from model_adapters.generation import stream_async
    from model_adapters.prompting import encode

    tokenizer = model.runtime.tokenizer
    ids = list(prompt) if isinstance(prompt, list) else encode(tokenizer, prompt)
    if not ids:
        raise bad_request("'prompt' must not be empty.", param="prompt")
    if min(ids) < 0 or max(ids) >= len(tokenizer):
        raise bad_request(f"'prompt' has token ids outside 0..{len(tokenizer) - 1}.", "prompt")
    request = model.request_for_prompt(ids, stop, **sampling)
    async for delta in stream_async(model.runtime.submit, request):
        if delta.prompt_logprobs is not None:
            # The first prompt token has no logprob; its text is still a token.
            first = [(tokenizer.decode(ids[:1], skip_special_tokens=False), None, None)]
            entries = first + _legacy_entries(tokenizer, delta.prompt_logprobs[1:])
            yield _Piece(logprobs=entries, is_prompt=True)
            continue
        entries = None
        if request.logprobs is not None:
            entries = _legacy_entries(tokenizer, delta.logprobs or [])
        yield _Piece(
            delta.text, delta.finish_reason, delta.prompt_tokens, delta.completion_tokens, entries
        )


async def _chat_pieces(
    runnable: Runnable, prompt: str, stop: list[str] | None, sampling: dict[str, Any]
) -> Any:
    """Other models: the prompt is one user message."""
    async for out in open_stream(runnable, [HumanMessage(content=prompt)], stop, sampling):
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
    state = app_state(request)
    n = body.n or 1
    if body.suffix:
        raise bad_request("'suffix' is not supported by this server.", param="suffix")
    if body.best_of not in (None, 1, n):
        raise bad_request("'best_of' other than n is not supported.", param="best_of")
    prompts = _prompts(body.prompt)
    name = default_name(body.model)
    overrides = generation_overrides(body.temperature, body.top_p, body.max_tokens, body.seed)
    model = await resolve_chat_model(body.model, state.settings, **overrides)
    check_max_tokens(name, body.max_tokens)
    local = _is_local(model)
    sampling = sampling_kwargs(body.sampling(), model, name)
    if body.logprobs is not None:
        if not local:
            raise bad_request(
                f"Model {name!r} does not support legacy 'logprobs'.", param="logprobs"
            )
        sampling["logprobs"] = body.logprobs
        if body.echo:
            sampling["prompt_logprobs"] = body.logprobs
    if not local and any(not isinstance(p, str) for p in prompts):
        raise bad_request(f"Model {name!r} takes text prompts, not token ids.", param="prompt")
    stop = stop_list(body.stop)
    deadline = Deadline(state.settings.request_timeout)
    tracker = state.metrics.track(name, "completions")

    def pieces(prompt: str | list[int]) -> AsyncIterator[_Piece]:
        if local:
            return _raw_pieces(model, prompt, stop, sampling)
        return _chat_pieces(model, prompt, stop, sampling)  # type: ignore[arg-type]

    jobs = [(i * n + j, p) for i, p in enumerate(prompts) for j in range(n)]
    echo = {index: _decode(model, p) if local else str(p) for index, p in jobs} if body.echo else {}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        logprobs_on = body.logprobs is not None
        return await _stream_completion(
            jobs, pieces, echo, name, include_usage, deadline, tracker, n, logprobs_on
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
                if piece.logprobs is not None:
                    out.logprobs = (out.logprobs or []) + piece.logprobs
                out.raw_finish = piece.raw_finish or out.raw_finish
                out.prompt_tokens = max(out.prompt_tokens, piece.prompt_tokens)
                out.completion_tokens += piece.completion_tokens
        finally:
            await aclose_stream(stream)
        return out

    try:
        results = await gather_cancelling([collect(p) for _, p in jobs])
    except BaseException as exc:
        tracker.finish(outcome_of(exc))
        raise
    usage = _completion_usage(results, n)
    tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
    tracker.finish("ok")
    choices = [
        CompletionChoice(
            index=index,
            text=echo.get(index, "") + r.text,
            logprobs=_legacy_logprobs(r.logprobs, 0),
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
    logprobs_on: bool = False,
) -> Any:
    first_stream = pieces(jobs[0][1])
    first: Any = await first_output(first_stream, deadline, tracker)
    response_id = random_id("cmpl")
    created = int(time.time())

    def frame(
        index: int, text: str, finish: str | None = None, logprobs: Any = None
    ) -> CompletionResponse:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)
        return CompletionResponse(id=response_id, created=created, model=name, choices=[choice])

    async def payloads() -> AsyncIterator[Any]:
        totals: list[_Piece] = []
        outcome = "error"
        try:
            for position, (index, prompt) in enumerate(jobs):
                stream = first_stream if position == 0 else pieces(prompt)
                pending = [first] if position == 0 and first is not None else []
                total = _Piece()
                offset = 0  # of the next token in the choice's text
                if echo.get(index) and not logprobs_on:
                    yield frame(index, echo[index])  # with logprobs: the prompt piece
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
                        if piece.logprobs:
                            text = echo.get(index, "") if piece.is_prompt else piece.text
                            tracker.first_token()
                            logprobs = _legacy_logprobs(piece.logprobs, offset)
                            yield frame(index, text, logprobs=logprobs)
                            offset += sum(len(t) for t, _, _ in piece.logprobs)
                        elif piece.text:
                            tracker.first_token()
                            yield frame(index, piece.text)
                finally:
                    await aclose_stream(stream)
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
            outcome = outcome_of(exc)
            raise
        finally:
            tracker.finish(outcome)

    return sse_response(payloads(), close=[first_stream])
