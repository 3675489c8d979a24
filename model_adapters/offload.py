"""CPU-heavy request preparation (chat templates, tokenizing, grammar compilation) runs
in a small pool of worker threads, never on the event loop: one request with a huge
schema or prompt must not stall every other client (not even /health).

The pool is bounded (at most `workers` preparations at once; the rest queue), and a
caller that is cancelled while queued never starts its work. Work already running
finishes in its thread (Python threads cannot be interrupted) and its result is dropped.

The pool is state, so it lives in an object that is passed down: the model catalog owns
one `Offloader` (`ModelCatalog.prepare`) and hands it to each `ChatLocal` it builds.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Offloader:
    """A bounded thread pool for blocking CPU work called from async code."""

    def __init__(self, workers: int | None = None, name: str = "prepare") -> None:
        workers = workers or default_workers()
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread, with the caller's context variables (tracing,
        callbacks, the rate-limited caller) as they were when called."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await loop.run_in_executor(self._pool, call)


def default_workers() -> int:
    """As many preparations at once as there are cores, at least two (so one huge
    request cannot queue all others)."""
    return max(2, os.cpu_count() or 2)
