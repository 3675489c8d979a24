"""One serving path for every wire format, and its shared pieces (the request deadline,
opening and closing model streams, running n choices).

A route validates its request (protocol.py: the request model owns its mapping to
model parameters), resolves the model once and builds a `Serving`: one `Job` per choice
(n choices; times prompts for legacy completions). `serve()` then runs it the same way
for every wire format:

- not streamed: every job concurrently (`invoke`, else its stream collected), then
  `wire.response(choices, usage)`;
- streamed: every job's stream concurrently, events merged as they come; the first is
  awaited before the response starts (so early errors get their own HTTP status), then
  `wire` turns events into payloads and chatbot.api.sse frames them.

A new wire format (OpenAI Responses, Anthropic Messages) is a `WireFormat` and a route
that builds a `Serving`; see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from fastapi import Request
from langchain_core.messages import AIMessageChunk

from chatbot.api.metrics import RequestTracker
from chatbot.api.openai.convert import as_chunk, content_text, raw_finish_reason
from chatbot.api.openai.protocol import UsageInfo
from chatbot.api.sse import sse_response


def app_state(request: Request) -> Any:
    return request.app.state.chatbot


# Python 3.11+: a timeout in the caller's task, like anyio.fail_after but cheaper.
_asyncio_timeout = getattr(asyncio, "timeout", None)


class Deadline:
    """The request's deadline (settings.request_timeout); `next` awaits one item.

    anyio's fail_after runs in the caller's task (asyncio.wait_for would advance the
    model's generator in another task, which a client disconnect can leave running).
    """

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def _remaining(self) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    async def next(self, stream: AsyncIterator[Any]) -> Any:
        if _asyncio_timeout is not None:  # per token: asyncio's is several times cheaper
            async with _asyncio_timeout(self._remaining()):
                return await stream.__anext__()
        with anyio.fail_after(self._remaining()):
            return await stream.__anext__()

    async def run(self, awaitable: Any) -> Any:
        if _asyncio_timeout is not None:
            async with _asyncio_timeout(self._remaining()):
                return await awaitable
        with anyio.fail_after(self._remaining()):
            return await awaitable


async def first_output(stream: AsyncIterator[Any], deadline: Deadline, tracker: Any) -> Any:
    """Await a stream's first output (None if it is empty) before the response starts, so
    that errors raised before any token (prompt too long, queue full, bad content) get
    their own HTTP status. On error the stream is closed and the request counted."""
    try:
        return await deadline.next(stream)
    except StopAsyncIteration:
        return None
    except BaseException as exc:
        await aclose_stream(stream)
        tracker.finish(outcome_of(exc))
        raise


async def aclose_stream(stream: Any) -> None:
    """Close a model stream, even while our task is being cancelled (client gone):
    closing it is what cancels the generation."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


async def gather_cancelling(coros: list[Any]) -> list[Any]:
    """Run coroutines concurrently; if one fails or we are cancelled, cancel the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def outcome_of(exc: BaseException) -> str:
    return "cancelled" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else "error"


# --- the serving object ------------------------------------------------------------


@dataclass
class Job:
    """One choice to generate: its index on the wire, the prompt it answers (usage counts
    each prompt once), how to stream it and, optionally, how to get it in one call."""

    index: int
    prompt: int
    open: Callable[[], AsyncIterator[Any]]
    invoke: Callable[[], Awaitable[Any]] | None = None


@dataclass
class Choice:
    """A finished choice, wire-neutral. `message` is set when it came from one call."""

    index: int
    prompt: int
    text: str
    raw_finish: str | None
    has_tool_calls: bool
    usage: dict[str, int]
    message: AIMessageChunk | None = None
    # Token logprobs (OpenAI chat `logprobs.content` items), when asked for; for a raw
    # prompt with echo also the prompt's (`prompt_logprobs`).
    logprobs: list[dict[str, Any]] | None = None
    prompt_logprobs: list[dict[str, Any]] | None = None


@dataclass
class _Tally:
    """What a streamed choice adds up to as its chunks arrive."""

    text: list[str] = field(default_factory=list)
    raw_finish: str | None = None
    has_tool_calls: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None
    prompt_logprobs: list[dict[str, Any]] | None = None

    def add(self, chunk: AIMessageChunk) -> None:
        meta = chunk.response_metadata
        if meta.get("logprobs"):
            self.logprobs = (self.logprobs or []) + list(meta["logprobs"].get("content") or [])
        if meta.get("prompt_logprobs"):
            self.prompt_logprobs = list(meta["prompt_logprobs"].get("content") or [])
        if chunk.content:
            self.text.append(content_text(chunk.content))
        self.raw_finish = raw_finish_reason(chunk) or self.raw_finish
        self.has_tool_calls = self.has_tool_calls or bool(chunk.tool_call_chunks)
        for key, value in (chunk.usage_metadata or {}).items():
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value

    def choice(self, job: Job) -> Choice:
        return Choice(
            job.index,
            job.prompt,
            "".join(self.text),
            self.raw_finish,
            self.has_tool_calls,
            self.usage,
            logprobs=self.logprobs,
            prompt_logprobs=self.prompt_logprobs,
        )


def total_usage(choices: list[Choice]) -> UsageInfo:
    """Each prompt counts once (its largest report); every completion adds up."""
    prompts: dict[int, int] = {}
    for c in choices:
        prompts[c.prompt] = max(prompts.get(c.prompt, 0), c.usage.get("input_tokens", 0))
    prompt = sum(prompts.values())
    completion = sum(c.usage.get("output_tokens", 0) for c in choices)
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


class WireFormat(Protocol):
    """How one API writes a served request: stream events and the whole response.

    A wire format with its own SSE framing (events named by their `type`: Responses,
    Messages) also has `stream_response(payloads, close)`, returning the response
    (chatbot.api.sse.typed_sse_response); otherwise OpenAI's `data:` frames and [DONE]."""

    def opening(self, job: Job) -> list[Any]: ...  # before a choice's first delta

    def delta(self, job: Job, chunk: AIMessageChunk) -> list[Any]: ...

    def closing(self, choice: Choice) -> list[Any]: ...  # a choice finished

    def usage(self, usage: UsageInfo) -> list[Any]: ...  # after all, if asked for

    def response(self, choices: list[Choice], usage: UsageInfo) -> Any: ...


class BuilderWire:
    """The WireFormat of an API whose events come from one builder (`start`, `feed`,
    `finish`): Responses and Messages. Subclasses write the whole response
    (`response`, after `build_whole`) and their own SSE (`stream_response`)."""

    def __init__(self, builder: Any) -> None:
        self.builder = builder

    def opening(self, job: Job) -> list[Any]:
        return self.builder.start()

    def delta(self, job: Job, chunk: AIMessageChunk) -> list[Any]:
        return self.builder.feed(chunk)

    def closing(self, choice: Choice) -> list[Any]:
        return self.builder.finish()

    def usage(self, usage: UsageInfo) -> list[Any]:
        return []  # the builder puts the usage in its own last events

    def build_whole(self, choices: list[Choice]) -> None:
        """Feed a non-streamed answer (one choice) through the builder."""
        choice = choices[0]
        message = choice.message if choice.message is not None else AIMessageChunk(choice.text)
        self.builder.feed(message)
        self.builder.finish()


@dataclass
class Serving:
    """A validated request turned into model calls once: name, jobs, deadline, metrics."""

    name: str
    jobs: list[Job]
    deadline: Deadline
    tracker: RequestTracker
    include_usage: bool = False


_END = object()  # a job's stream ended


async def _events(serving: Serving) -> AsyncIterator[tuple[Job, Any]]:
    """(job, output) as the jobs' streams produce them, then (job, _END) for each."""
    jobs, deadline = serving.jobs, serving.deadline
    if len(jobs) == 1:  # the common case: no tasks, no queue
        job, stream = jobs[0], jobs[0].open()
        try:
            while True:
                try:
                    out = await deadline.next(stream)
                except StopAsyncIteration:
                    break
                yield job, out
            yield job, _END
        finally:
            await aclose_stream(stream)
        return
    queue: asyncio.Queue[tuple[Job, Any, BaseException | None]] = asyncio.Queue()
    streams = [job.open() for job in jobs]

    async def pump(job: Job, stream: AsyncIterator[Any]) -> None:
        try:
            async for out in stream:
                await queue.put((job, out, None))
        except Exception as exc:  # noqa: BLE001 - re-raised by the reader
            await queue.put((job, None, exc))
            return
        await queue.put((job, _END, None))

    tasks = [asyncio.ensure_future(pump(j, s)) for j, s in zip(jobs, streams, strict=True)]
    try:
        left = len(jobs)
        while left:
            job, out, error = await deadline.run(queue.get())
            if error is not None:
                raise error
            left -= out is _END
            yield job, out
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in streams:
                await aclose_stream(stream)


async def _collect(serving: Serving, job: Job) -> Choice:
    deadline, tracker = serving.deadline, serving.tracker
    if job.invoke is not None:
        # One call, not a stream: a remote upstream then answers with one JSON body
        # (cheaper to parse). Cancelling still stops a local generation.
        message = as_chunk(await deadline.run(job.invoke()))
        tracker.first_token()
        tally = _Tally()
        tally.add(message)
        choice = tally.choice(job)
        choice.has_tool_calls = bool(message.tool_calls)  # unparsed calls never go out
        choice.message = message
        return choice
    tally = _Tally()
    stream = job.open()
    try:
        while True:
            try:
                out = await deadline.next(stream)
            except StopAsyncIteration:
                break
            chunk = as_chunk(out)
            if chunk.content or chunk.tool_call_chunks:
                tracker.first_token()
            tally.add(chunk)
    finally:
        await aclose_stream(stream)
    return tally.choice(job)


async def _stream_payloads(
    serving: Serving, wire: WireFormat, events: AsyncIterator[tuple[Job, Any]], first: Any
) -> AsyncIterator[Any]:
    tracker = serving.tracker
    tallies = {job.index: _Tally() for job in serving.jobs}
    choices: list[Choice] = []
    outcome = "error"
    try:
        for job in serving.jobs:
            for payload in wire.opening(job):
                yield payload
        pending = [first] if first is not None else []
        while True:
            if pending:
                job, out = pending.pop()
            else:
                try:
                    job, out = await events.__anext__()
                except StopAsyncIteration:
                    break
            if out is _END:
                choice = tallies[job.index].choice(job)
                choices.append(choice)
                for payload in wire.closing(choice):
                    yield payload
                continue
            chunk = as_chunk(out)
            tallies[job.index].add(chunk)
            if chunk.content or chunk.tool_call_chunks:
                tracker.first_token()
            for payload in wire.delta(job, chunk):
                yield payload
        usage = total_usage(choices)
        tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
        if serving.include_usage:
            for payload in wire.usage(usage):
                yield payload
        outcome = "ok"
    except BaseException as exc:
        outcome = outcome_of(exc)
        raise
    finally:
        await aclose_stream(events)
        tracker.finish(outcome)


async def serve(serving: Serving, wire: WireFormat, stream: bool) -> Any:
    """Run a Serving: the wire format's whole response, or its SSE stream."""
    tracker = serving.tracker
    if not stream:
        try:
            choices = await gather_cancelling([_collect(serving, job) for job in serving.jobs])
        except BaseException as exc:
            tracker.finish(outcome_of(exc))
            raise
        usage = total_usage(choices)
        tracker.tokens(usage.prompt_tokens, usage.completion_tokens)
        tracker.finish("ok")
        return wire.response(choices, usage)
    events = _events(serving)
    first = await first_output(events, serving.deadline, tracker)
    payloads = _stream_payloads(serving, wire, events, first)
    framing = getattr(wire, "stream_response", None)  # its own SSE framing, if any
    if framing is not None:
        return framing(payloads, [events])
    return sse_response(payloads, close=[events])
