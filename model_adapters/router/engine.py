"""`engine: <any>` with `replicas` or `fallbacks`: the router engine, wrapping the
engine picked for the entry by composition (see model_adapters.router.replicas)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from chatbot.engines import Engine
from model_adapters.router.chat import ChatRouter, RouterEmbeddings
from model_adapters.router.replicas import (
    REPLICA_COUNTERS,
    AllReplicasFailed,
    FallbackResolver,
    Member,
    ReplicaPool,
    is_replica_failure,
)

if TYPE_CHECKING:
    from chatbot.registry import ModelEntry
    from chatbot.settings import Settings

__all__ = [
    "REPLICA_COUNTERS",
    "AllReplicasFailed",
    "FallbackResolver",
    "ReplicaPool",
    "RouterEngine",
    "is_replica_failure",
]


def _labels(entry: ModelEntry) -> list[str]:
    """Metric/error names for replicas: their base_url without any user:password (a
    number added if repeated)."""
    raw = [r.base_url for r in entry.replicas] or [entry.base_url or entry.name]
    urls = [re.sub(r"//[^/@]*@", "//", u).rstrip("/") for u in raw]
    return [u if urls.count(u) == 1 else f"{u}#{i}" for i, u in enumerate(urls)]


class RouterEngine(Engine):
    """Wraps the engine class picked for the entry (by composition): one inner engine
    per replica, one shared health pool; fallbacks resolved through `resolver`."""

    def __init__(
        self,
        entry: ModelEntry,
        settings: Settings,
        inner: type[Engine],
        resolver: FallbackResolver,
    ) -> None:
        super().__init__(entry, settings)
        self.inner = inner
        self.resolver = resolver
        if entry.replicas:
            # The router retries on other replicas, so the client's own retries are off.
            subs = [
                entry.model_copy(
                    update={
                        "base_url": r.base_url,
                        "api_key": r.api_key or entry.api_key,
                        "replicas": [],
                        "fallbacks": [],
                        "max_retries": 0,
                    }
                )
                for r in entry.replicas
            ]
        else:
            subs = [entry.model_copy(update={"fallbacks": []})]
        members = [
            Member(label, inner(sub, settings), i)
            for i, (label, sub) in enumerate(zip(_labels(entry), subs, strict=True))
        ]
        self.pool = ReplicaPool(entry.name, members, entry.router)

    def chat_model(self, **overrides: Any) -> Any:
        return ChatRouter(
            model=self.entry.name,
            pool=self.pool,
            fallbacks=list(self.entry.fallbacks),
            overrides=overrides,
            resolver=self.resolver,
        )

    def embeddings(self) -> Any:
        return RouterEmbeddings(self.pool, list(self.entry.fallbacks), self.resolver)

    def memory_bytes(self) -> int:
        return sum(m.engine.memory_bytes() for m in self.pool.members)

    def close(self) -> None:
        for member in self.pool.members:
            member.engine.close()
