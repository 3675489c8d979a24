"""Engine-neutral pieces of token generation: the request, its output, stop strings,
incremental detokenisation and sampling. Shared by every local engine."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
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
    # Sampling fields of the OpenAI/vLLM APIs (vLLM's meanings; the defaults change nothing).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: off; k: the chosen token's logprob and the top k
    prompt_logprobs: int | None = None  # the same for each prompt token (echo)

    def plain(self) -> bool:
        """Whether the logits are used as they are (no penalty, bias or filter)."""
        return not (
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
        )


@dataclass
class TokenLogprob:
    """One token's log-probability and the `top` most likely tokens at its position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Delta:
    """A piece of output. The last one carries finish_reason and the token counts."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    stop_sequence: str | None = None  # the stop string that ended the output, if one did
    logprobs: list[TokenLogprob] | None = None  # of the tokens this delta's text came from
    prompt_logprobs: list[TokenLogprob | None] | None = None  # once, first: the prompt's

    def mergeable(self, last: bool = False) -> bool:
        """Can join the delta after it (`last`: can be joined to the one before it)?
        Errors and the prompt's logprobs stay deltas of their own; the final delta can
        only come last."""
        if self.error is not None or self.prompt_logprobs is not None:
            return False
        return last or self.finish_reason is None

    def merged(self, later: Delta) -> Delta:
        """This delta followed by `later`, as one."""
        logprobs = None
        if self.logprobs is not None or later.logprobs is not None:
            logprobs = [*(self.logprobs or []), *(later.logprobs or [])]
        return Delta(
            text=self.text + later.text,
            finish_reason=later.finish_reason,
            prompt_tokens=later.prompt_tokens or self.prompt_tokens,
            completion_tokens=later.completion_tokens or self.completion_tokens,
            stop_sequence=later.stop_sequence,
            logprobs=logprobs,
        )


class StopMatcher:
    """Finds stop strings in streamed text, holding back a possible partial match."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.matched: str | None = None  # the stop string found

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit now, whether a stop string was hit)."""
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out, False
        hits = [(i, s) for s in self.stops if (i := self.buffer.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits)
            out, self.buffer = self.buffer[:at], ""
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


def process_logits(
    logits: Any, request: GenerationRequest, output_ids: list[int], prompt_ids: list[int]
) -> Any:
    """Logit bias and penalties (vLLM's definitions) applied to a 1-D logits tensor.

    repetition_penalty: tokens seen in the prompt or output are divided by it when
    positive, multiplied when negative; frequency/presence: subtracted per output count
    and once per token present in the output.
    """
    import torch

    scores = logits.float().clone()
    if request.logit_bias:
        ids = torch.tensor(list(request.logit_bias), device=scores.device)
        scores[ids] += torch.tensor(list(request.logit_bias.values()), device=scores.device)
    if request.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), device=scores.device)
        if len(seen):
            picked = scores[seen]
            penalty = request.repetition_penalty
            scores[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    if output_ids and (request.frequency_penalty or request.presence_penalty):
        ids, counts = torch.unique(torch.tensor(output_ids), return_counts=True)
        ids = ids.to(scores.device)
        scores[ids] -= request.frequency_penalty * counts.to(scores.device).float()
        scores[ids] -= request.presence_penalty
    return scores


# Below this, temperature scaling overflows float32 logits (x / 1e-39 is inf) and the
# distribution is one-hot anyway: sample greedily, as vLLM does under its _SAMPLING_EPS.
GREEDY_BELOW = 1e-5


def is_greedy(temperature: float) -> bool:
    """Whether a request's temperature means argmax decoding (0 or too tiny to scale by)."""
    return not temperature >= GREEDY_BELOW  # NaN is greedy too


def sample_next(
    logits: Any,
    temperature: float,
    top_p: float,
    generator: Any,
    top_k: int = 0,
    min_p: float = 0.0,
) -> int:
    """Pick the next token from a 1-D logits tensor: greedy at (near) temperature 0, else
    sample after the top-k, min-p and top-p filters. Numeric edges (tiny top_p, all-masked
    or non-finite scores) fall back to the most likely token instead of failing in
    torch.multinomial."""
    import torch

    if is_greedy(temperature):
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_k and top_k > 0 and top_k < probs.shape[-1]:
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if min_p > 0:
        probs = torch.where(probs >= min_p * probs.max(), probs, torch.zeros_like(probs))
    if top_p < 1.0:
        probs, order = torch.sort(probs, descending=True)
        if top_k or min_p > 0:  # filtered above: top_p counts over what is left
            probs = probs / probs.sum()
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


def token_logprob(logits: Any, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability under the model's raw distribution (vLLM's
    default "raw_logprobs": before penalties and filters) and the `top` best tokens."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logp, top)
        best = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logp[token].item()), best)


# --- bridging a worker thread to callers ---------------------------------------------


class Sink:
    """Where a worker thread puts a request's deltas; sync or async readers drain it.

    A reader that falls behind gets what piled up as one merged delta (as vLLM's output
    collector does): under load the per-token work above the engine (LangChain chunks,
    wire-format events) is done once per wake-up, not once per token. The producer
    wakes the reader only when it is not already woken."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self._ready: deque[Delta] = deque()
        self._lock = threading.Lock()
        self._woken = False  # a wake-up is on its way: later puts need not send another
        self._wake: asyncio.Event | threading.Event
        self._wake = asyncio.Event() if loop else threading.Event()

    def put(self, delta: Delta) -> None:
        with self._lock:
            self._ready.append(delta)
            if self._woken:
                return
            self._woken = True
        if self.loop is None:
            self._wake.set()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake.set)

    def _take(self) -> Delta | None:
        """Everything ready, merged into one delta; None (and re-armed) when empty."""
        with self._lock:
            if not self._ready:
                self._woken = False
                self._wake.clear()
                return None
            delta = self._ready.popleft()
            while self._ready and delta.mergeable() and self._ready[0].mergeable(last=True):
                delta = delta.merged(self._ready.popleft())
            return delta

    def iter_sync(self, cancel: threading.Event) -> Iterator[Delta]:
        try:
            while True:
                delta = self._take()
                if delta is None:
                    self._wake.wait()
                    continue
                yield delta
                if delta.finish_reason or delta.error:
                    return
        finally:
            cancel.set()  # consumer stopped early (break, exception, GeneratorExit)

    async def iter_async(self, cancel: threading.Event) -> AsyncIterator[Delta]:
        try:
            while True:
                delta = self._take()
                if delta is None:
                    await self._wake.wait()  # type: ignore[misc]
                    continue
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
