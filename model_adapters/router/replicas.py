"""Replica health and failover for the router (model_adapters.router.engine): one
registry entry over several `replicas`, then its `fallbacks`.

```yaml
models:
  gpt:
    provider: openai
    model: qwen2.5-7b
    replicas:                       # each a base_url (and optional api_key)
      - {base_url: http://10.0.0.1:8000/v1}
      - {base_url: http://10.0.0.2:8000/v1, api_key: ${KEY_2}}
    fallbacks: [tiny]               # other entries, tried in order when every replica fails
    router: {strategy: least-in-flight, cooldown: 30, backoff: 0.1}
```

Requests go to healthy replicas (least in flight, ties in round-robin order, or plain
round robin). A replica that fails with a connect error, timeout, 429 or 5xx is put in
cooldown and the request is retried on another replica after a short backoff; request
errors (other 4xx) are the caller's and are raised at once. Streams fail over only until
the first token has been sent. `ChatRouter` is a BaseChatModel, so it works in code, over
/v1 and in chains. Per-replica Prometheus counters: chatbot_replica_{requests,failures,
cooldowns}_total{model, replica}.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
from prometheus_client import Counter

from chatbot.engines import Engine
from chatbot.errors import AllReplicasFailed, QueueFullError

if TYPE_CHECKING:
    from chatbot.registry import RouterOptions

T = TypeVar("T")

__all__ = ["AllReplicasFailed", "FallbackResolver", "Member", "ReplicaPool"]


class FallbackResolver(Protocol):
    """How a router reaches its `fallbacks` (other registry entries): the catalog that
    built it, injected, so this module never imports the catalog."""

    def chat_model(self, name: str | None = None, **overrides: Any) -> Any: ...

    def embeddings(self, name: str | None = None) -> Any: ...


_LABELS = ["model", "replica"]
# On prometheus_client's default registry; an app with its own CollectorRegistry adds
# them with `for c in REPLICA_COUNTERS: registry.register(c)`.
REQUESTS = Counter("chatbot_replica_requests", "Requests sent to a replica", _LABELS)
FAILURES = Counter(
    "chatbot_replica_failures", "Replica failures (connect, timeout, 429, 5xx)", _LABELS
)
COOLDOWNS = Counter("chatbot_replica_cooldowns", "Times a replica was put in cooldown", _LABELS)
REPLICA_COUNTERS = (REQUESTS, FAILURES, COOLDOWNS)


def is_replica_failure(exc: BaseException) -> bool:
    """Connect errors, timeouts, 429 and 5xx: the replica's fault, worth another replica."""
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status == 429 or status == 408 or status >= 500
    try:
        import openai

        if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
            return True
    except ImportError:  # pragma: no cover - openai ships with langchain-openai
        pass
    # A local model's full queue is its 429.
    busy = (httpx.TransportError, ConnectionError, TimeoutError, QueueFullError)
    return isinstance(exc, busy)


@dataclass(eq=False)
class Member:
    label: str
    engine: Engine
    index: int
    in_flight: int = 0
    cooldown_until: float = 0.0


class ReplicaPool:
    """Health and load of one entry's replicas, shared by every chat model built from it."""

    def __init__(self, model: str, members: list[Member], options: RouterOptions) -> None:
        self.model = model
        self.members = members
        self.options = options
        self._lock = threading.Lock()
        self._last = -1

    def cooling(self, tried: Collection[str] = ()) -> list[str]:
        """Replicas in cooldown, except those in `tried` (for error messages)."""
        now = time.monotonic()
        return [m.label for m in self.members if m.cooldown_until > now and m.label not in tried]

    def acquire(self, tried: set[str], probe: bool) -> Member | None:
        """The next replica to try (not yet tried in this request), counted as in flight.

        Replicas in cooldown are skipped unless `probe` (no fallback is left to take over),
        in which case the one coming out of cooldown soonest is tried."""
        with self._lock:
            now = time.monotonic()
            left = [m for m in self.members if m.label not in tried]
            healthy = [m for m in left if m.cooldown_until <= now]
            if not healthy and not (probe and left):
                return None
            n = len(self.members)
            after = self._last + 1

            def order(m: Member) -> tuple[float, int]:
                rotation = (m.index - after) % n  # the next one after the last picked first
                if not healthy:
                    return (m.cooldown_until, rotation)
                if self.options.strategy == "round-robin":
                    return (0, rotation)
                return (m.in_flight, rotation)

            member = min(healthy or left, key=order)
            member.in_flight += 1
            self._last = member.index
        REQUESTS.labels(self.model, member.label).inc()
        return member

    def release(self, member: Member, error: BaseException | None = None) -> None:
        with self._lock:
            member.in_flight -= 1
            if error is None:
                member.cooldown_until = 0.0
                return
            member.cooldown_until = time.monotonic() + self.options.cooldown
        FAILURES.labels(self.model, member.label).inc()
        COOLDOWNS.labels(self.model, member.label).inc()

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1, 2, ...): exponential with jitter."""
        base = min(self.options.max_backoff, self.options.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)

    # --- failover for one call (chat or embeddings) ----------------------------------
    # run and arun are the same loop, one sync and one async; _failed decides for both.

    def _failed(self, member: Member, exc: Exception) -> bool:
        """Release `member` after `exc`: a replica failure puts it in cooldown and the
        next one is tried (True); any other error is the caller's (False: re-raise)."""
        failed = is_replica_failure(exc)
        self.release(member, exc if failed else None)
        return failed

    def run(
        self, call: Callable[[Member], T], fallbacks: Sequence[tuple[str, Callable[[], T]]] = ()
    ) -> T:
        tried: list[tuple[str, BaseException]] = []
        names: set[str] = set()
        while (member := self.acquire(names, probe=not fallbacks)) is not None:
            if tried:
                time.sleep(self.backoff(len(tried)))
            names.add(member.label)
            try:
                result = call(member)
            except Exception as exc:
                if not self._failed(member, exc):
                    raise
                tried.append((member.label, exc))
                continue
            except BaseException:  # cancelled: not the replica's fault
                self.release(member)
                raise
            self.release(member)
            return result
        for name, fallback in fallbacks:
            try:
                return fallback()
            except Exception as exc:
                tried.append((f"fallback {name!r}", exc))
        raise AllReplicasFailed(self.model, tried, self.cooling(names))

    async def arun(
        self,
        call: Callable[[Member], Awaitable[T]],
        fallbacks: Sequence[tuple[str, Callable[[], Awaitable[T]]]] = (),
    ) -> T:
        tried: list[tuple[str, BaseException]] = []
        names: set[str] = set()
        while (member := self.acquire(names, probe=not fallbacks)) is not None:
            if tried:
                await asyncio.sleep(self.backoff(len(tried)))
            names.add(member.label)
            try:
                result = await call(member)
            except Exception as exc:
                if not self._failed(member, exc):
                    raise
                tried.append((member.label, exc))
                continue
            except BaseException:  # cancelled: not the replica's fault
                self.release(member)
                raise
            self.release(member)
            return result
        for name, fallback in fallbacks:
            try:
                return await fallback()
            except Exception as exc:
                tried.append((f"fallback {name!r}", exc))
        raise AllReplicasFailed(self.model, tried, self.cooling(names))
