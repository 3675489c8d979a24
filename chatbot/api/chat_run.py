"""The seam other wire formats (Responses, Anthropic Messages) use to run a chat request:
they translate their request into a `ChatCompletionRequest`, then

    run = await prepare_chat(body, state, "responses")   # 4xx before anything runs
    message = await invoke_chat(run)                      # one AIMessageChunk, or
    stream = await open_chat_stream(run)                  # first output awaited
    async for chunk in stream.chunks(): ...               # AIMessageChunks

so model resolution, tools, structured output, sampling fields, limits, the deadline,
metrics and cancellation (closing the stream cancels the generation) are the chat
route's own (chatbot.api.openai: bind_tools, the request model's overrides, the
serving path's Deadline, first_output, aclose_stream). Usage is counted and the
request's outcome recorded here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable

from chatbot.api.metrics import RequestTracker
from chatbot.api.models import check_max_tokens, resolve_chat_model
from chatbot.api.openai.chat import bind_tools
from chatbot.api.openai.convert import as_chunk, to_langchain_messages
from chatbot.api.openai.protocol import ChatCompletionRequest
from chatbot.api.openai.serving import Deadline, aclose_stream, first_output, outcome_of
from chatbot.api.sampling import sampling_kwargs


@dataclass
class ChatRun:
    """A validated chat request, ready to run on its model."""

    runnable: Runnable
    messages: list[BaseMessage]
    stop: list[str] | None
    kwargs: dict[str, Any]
    name: str
    deadline: Deadline
    tracker: RequestTracker
    model: Any = field(default=None, repr=False)


async def prepare_chat(
    body: ChatCompletionRequest, state: Any, endpoint: str, max_tokens_param: str = "max_tokens"
) -> ChatRun:
    """Everything the chat route checks before it runs: 4xx errors are raised here.
    `max_tokens_param`: the caller's name for the token limit, for its 400."""
    messages = to_langchain_messages([m.model_dump(exclude_none=True) for m in body.messages])
    name = state.catalog.default_name(body.model)
    overrides = body.generation_overrides()
    model = await resolve_chat_model(state.catalog, body.model, **overrides)
    check_max_tokens(state.catalog, name, overrides.get("max_tokens"), max_tokens_param)
    runnable, kwargs = bind_tools(model, body, name)
    kwargs.update(sampling_kwargs(body.sampling(), model, name))
    deadline = Deadline(state.settings.request_timeout)
    tracker = state.metrics.track(name, endpoint)
    return ChatRun(
        runnable, messages, body.stop_sequences(), kwargs, name, deadline, tracker, model
    )


def _count(run: ChatRun, message: AIMessageChunk) -> None:
    usage = message.usage_metadata or {}
    run.tracker.tokens(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))


async def invoke_chat(run: ChatRun) -> AIMessageChunk:
    """The whole answer as one message chunk (tool calls, usage, response_metadata)."""
    kwargs = run.kwargs if run.stop is None else {**run.kwargs, "stop": run.stop}
    try:
        message = as_chunk(await run.deadline.run(run.runnable.ainvoke(run.messages, **kwargs)))
    except BaseException as exc:
        run.tracker.finish(outcome_of(exc))
        raise
    run.tracker.first_token()
    _count(run, message)
    run.tracker.finish("ok")
    return message


class ChatStream:
    """A chat model stream whose first output has arrived (so errors before it were HTTP
    errors). `chunks()` yields every output as an AIMessageChunk; `aclose()` cancels."""

    def __init__(self, run: ChatRun, stream: AsyncIterator[Any], first: Any) -> None:
        self.run = run
        self.stream = stream
        self._first = first

    async def chunks(self) -> AsyncIterator[AIMessageChunk]:
        run, outcome = self.run, "error"
        tokens = [0, 0]  # input, output
        try:
            pending = [self._first] if self._first is not None else []
            while True:
                if pending:
                    out = pending.pop()
                else:
                    try:
                        out = await run.deadline.next(self.stream)
                    except StopAsyncIteration:
                        break
                chunk = as_chunk(out)
                if chunk.content or chunk.tool_call_chunks:
                    run.tracker.first_token()
                usage = chunk.usage_metadata or {}
                tokens[0] += int(usage.get("input_tokens") or 0)
                tokens[1] += int(usage.get("output_tokens") or 0)
                yield chunk
            outcome = "ok"
            run.tracker.tokens(*tokens)
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            await aclose_stream(self.stream)
            run.tracker.finish(outcome)

    async def aclose(self) -> None:
        await aclose_stream(self.stream)


async def open_chat_stream(run: ChatRun) -> ChatStream:
    kwargs = run.kwargs if run.stop is None else {**run.kwargs, "stop": run.stop}
    stream = run.runnable.astream(run.messages, **kwargs)
    first = await first_output(stream, run.deadline, run.tracker)
    return ChatStream(run, stream, first)
