"""The runtime contract: what a local engine (transformers, vLLM) hands to `ChatLocal`
and to the catalog's pool. One place for it, for the stats every runtime keeps and for
the context-length check they all apply before queueing a request; and for how the
worker-thread runtimes (transformers, llama.cpp) finish a row of their batch.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from chatbot.errors import ContextLengthError, QueueFullError
from model_adapters.generation import Delta

if TYPE_CHECKING:
    from model_adapters.generation import GenerationRequest, Sink


@dataclass
class EngineStats:
    requests: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    steps: int = 0  # decode steps (one forward pass for the whole batch each)
    peak_batch: int = 0  # the most requests decoded together in one step


@runtime_checkable
class Runtime(Protocol):
    """Loaded weights behind a request queue. `submit` never blocks on generation: it
    queues the request (or raises ContextLengthError / QueueFullError at once) and the
    runtime reports deltas to `sink` from its own thread or loop."""

    tokenizer: Any
    context_length: int
    stats: EngineStats

    def submit(self, request: GenerationRequest, sink: Sink) -> None: ...

    def memory_bytes(self) -> int: ...

    def close(self) -> None: ...


def check_context(prompt_len: int, context_length: int) -> None:
    """Refuse a prompt that leaves no room for one generated token."""
    if prompt_len >= context_length:
        raise ContextLengthError(
            f"prompt has {prompt_len} tokens but the model's context length is {context_length}"
        )


class QueuedWorker:
    """The bounded, closable request queue in front of a runtime's one worker thread
    (transformers, llama.cpp). The subclass defines `_run`, which waits on `_cond` for
    `_waiting` requests or `_closed`, and calls `_start_worker` last in its __init__."""

    _run: Any

    def _start_worker(self, max_queue: int, name: str) -> None:
        self.max_queue = max_queue
        self._waiting: deque[tuple[GenerationRequest, Sink]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def _enqueue(self, request: GenerationRequest, sink: Sink) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the model runtime is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"request queue is full ({self.max_queue} waiting)")
            self._waiting.append((request, sink))
            self._cond.notify()

    def close(self) -> None:
        """Stop the worker after its current step; requests left get an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout=30)


# --- a batch row's end (rows: request, stops, constraint, produced, budget, finish) ----


def finish_after(row: Any, hit: bool) -> str | None:
    """Why a row stops after the token it just produced (None: it goes on): a stop
    string (`hit`), a constraint that is complete, or its token budget."""
    if hit:
        return "stop_string"
    if row.constraint is not None and row.constraint.done():
        return "stop"
    if row.produced >= row.budget:
        return "length"
    return None


def final_delta(row: Any, **extra: Any) -> Delta:
    """The last delta of a finished row, with its token counts. Text held back for a
    possible stop string is real output unless a stop string hit."""
    stopped = row.finish == "stop_string"
    return Delta(
        text="" if stopped else row.stops.flush(),
        finish_reason="stop" if stopped else row.finish,
        prompt_tokens=len(row.request.prompt_ids),
        completion_tokens=row.produced,
        **extra,
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def weights_bytes(path: Path | None) -> int:
    """Size of the weight files of a local checkpoint (an estimate before loading)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))
