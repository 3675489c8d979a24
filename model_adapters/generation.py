"""Engine-neutral pieces of token generation: the request, its output, stop strings,
incremental detokenisation and sampling. Shared by every local engine."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chatbot.errors import ContextLengthError, QueueFullError

__all__ = ["ContextLengthError", "QueueFullError"]  # re-exported: engines import them here


@dataclass
class Constraint:
    """What the output must match: a JSON schema, any JSON object, or a regex/EBNF grammar."""

    kind: str  # "json_schema" | "json_object" | "ebnf" | "structural_tag"
    spec: Any = None


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    constraint: Constraint | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Delta:
    """A piece of output. The last one carries finish_reason and the token counts."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


class StopMatcher:
    """Finds stop strings in streamed text, holding back a possible partial match."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit now, whether a stop string was hit)."""
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out, False
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        cut = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class IncrementalDecoder:
    """Token ids -> text deltas, without splitting multi-byte characters (vLLM's method)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=False)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=False)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""


# Below this, temperature scaling overflows float32 logits (x / 1e-39 is inf) and the
# distribution is one-hot anyway: sample greedily, as vLLM does under its _SAMPLING_EPS.
GREEDY_BELOW = 1e-5


def is_greedy(temperature: float) -> bool:
    """Whether a request's temperature means argmax decoding (0 or too tiny to scale by)."""
    return not temperature >= GREEDY_BELOW  # NaN is greedy too


def sample_next(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """Pick the next token from a 1-D logits tensor: greedy at (near) temperature 0, else
    top-p. Numeric edges (tiny top_p, all-masked or non-finite scores) fall back to the
    most likely token instead of failing in torch.multinomial."""
    import torch

    if is_greedy(temperature):
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(probs, dim=-1) - probs < top_p
        keep[0] = True  # the top token always stays (top_p may round to 0 in float32)
        probs = probs * keep
    else:
        order = None
    total = probs.sum()
    if not bool(torch.isfinite(total)) or float(total) <= 0:
        return int(torch.argmax(logits).item())
    choice = int(torch.multinomial(probs / total, 1, generator=generator).item())
    return choice if order is None else int(order[choice].item())


# --- bridging a worker thread to callers ---------------------------------------------


class Sink:
    """Where a worker thread puts a request's deltas; sync or async readers drain it."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self._q: queue.Queue[Delta] | asyncio.Queue[Delta]
        self._q = asyncio.Queue() if loop else queue.Queue()

    def put(self, delta: Delta) -> None:
        if self.loop is None:
            self._q.put_nowait(delta)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._q.put_nowait, delta)

    def iter_sync(self, cancel: threading.Event) -> Iterator[Delta]:
        try:
            while True:
                delta = self._q.get()  # type: ignore[call-arg]
                yield delta
                if delta.finish_reason or delta.error:
                    return
        finally:
            cancel.set()  # consumer stopped early (break, exception, GeneratorExit)

    async def iter_async(self, cancel: threading.Event) -> AsyncIterator[Delta]:
        try:
            while True:
                delta = await self._q.get()  # type: ignore[misc]
                yield delta
                if delta.finish_reason or delta.error:
                    return
        finally:
            cancel.set()  # task cancelled or consumer gone: the worker stops within a step


Submit = Callable[[GenerationRequest, Sink], None]


def stream_sync(submit: Submit, request: GenerationRequest) -> Iterator[Delta]:
    sink = Sink()
    submit(request, sink)
    for delta in sink.iter_sync(request.cancel):
        if delta.error:
            raise delta.error
        yield delta


async def stream_async(submit: Submit, request: GenerationRequest) -> AsyncIterator[Delta]:
    sink = Sink(asyncio.get_running_loop())
    submit(request, sink)
    async for delta in sink.iter_async(request.cancel):
        if delta.error:
            raise delta.error
        yield delta
