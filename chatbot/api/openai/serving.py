"""Shared pieces of the OpenAI routes: the request deadline, opening and closing model
streams, running n choices, and generation overrides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from chatbot import factory


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


def generation_overrides(
    temperature: float | None, top_p: float | None, max_tokens: int | None, seed: int | None
) -> dict[str, Any]:
    values = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    return {k: v for k, v in values.items() if v is not None}


def outcome_of(exc: BaseException) -> str:
    return "cancelled" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else "error"


def default_name(name: str | None, kind: str = "chat") -> str:
    if name:
        return name
    registry = factory.get_registry()
    return (registry.default_model if kind == "chat" else registry.default_embeddings) or ""


def open_stream(
    runnable: Runnable, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict
) -> AsyncIterator[Any]:
    if stop is not None:
        kwargs = {**kwargs, "stop": stop}
    return runnable.astream(messages, **kwargs)
