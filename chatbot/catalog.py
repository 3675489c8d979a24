"""`ModelCatalog`: the one owner of model state.

It holds the registry, the engines loaded from it (once each, even when many threads ask
at the same time), which engine was picked for each entry and why others were skipped,
and the memory pool (budget, LRU eviction, requests in flight), all under one lock.

`chatbot.get_chat_model()` and friends are thin calls on a default catalog made on first
use (chatbot.factory); the HTTP server's app state holds the catalog it serves from, so
two apps with two catalogs in one process share nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from chatbot.engines import Engine, pick_engine
from chatbot.errors import ModelLoadError
from chatbot.pool import ModelPool, PooledRuntime
from chatbot.registry import Kind, ModelEntry, Registry, load_registry
from chatbot.settings import Settings, get_settings
from model_adapters.offload import Offloader
from model_adapters.router.engine import RouterEngine

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel

    from model_adapters.runtime import Runtime

log = logging.getLogger(__name__)

Picked = tuple[str, dict[str, str]]  # (engine name, {skipped engine: reason})


class ModelCatalog:
    """Registry + loaded engines + engine picks + memory pool, behind one lock."""

    def __init__(self, registry: Registry | None = None, settings: Settings | None = None):
        self._settings = settings
        self._lock = threading.RLock()
        self._registry = registry
        self._engines: dict[str, Engine] = {}
        self._runtimes: dict[str, PooledRuntime] = {}
        self._loading: dict[str, threading.Lock] = {}
        self.picked: dict[str, Picked] = {}
        # Prompt rendering, tokenizing and grammar compilation of this catalog's local
        # chat models run here, off the event loop (bounded: model_adapters.offload).
        self.prepare = Offloader()
        self.pool = ModelPool(
            settings=lambda: self.settings,
            lock=self._lock,
            evict=self._evicted,
            reload=self.runtime,
        )

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    # --- the registry ------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                s = self.settings
                self._registry = load_registry(s.config, s.models_root)
            return self._registry

    def set_registry(self, registry: Registry | None) -> None:
        """Use another registry (tests, `--config`). Loaded engines of removed names are
        closed; None reloads the configured file on next use."""
        with self._lock:
            self._registry = registry
            names = list(self._engines)
        for name in names:
            if registry is None or name not in registry.entries:
                self.unload(name)

    def served_entry(self, name: str | None, kind: Kind | None = "chat") -> ModelEntry:
        """The served entry for `name` (None: the default), else ModelNotFoundError."""
        return self.registry.served_entry(name, kind)

    def default_name(self, name: str | None, kind: Kind = "chat") -> str:
        return self.registry.default_name(name, kind) or ""

    # --- engines -----------------------------------------------------------------------

    def engine(self, name: str | None = None, kind: Kind = "chat") -> Engine:
        """The loaded engine for a registry entry, loading it on first use."""
        entry = self.registry.get(name, kind)
        with self._lock:
            if entry.name in self._engines:
                self.pool.touch(entry.name)
                return self._engines[entry.name]
            gate = self._loading.setdefault(entry.name, threading.Lock())
        with gate:
            with self._lock:
                if entry.name in self._engines:
                    return self._engines[entry.name]
            cls, skipped = pick_engine(entry)
            for other, reason in skipped.items():
                log.info("model %s: engine %s skipped: %s", entry.name, other, reason)
            label = cls.name or cls.__name__
            log.info("model %s: loading with engine %s", entry.name, label)
            # The pool evicts idle models first if a memory budget is set.
            with self.pool.loading_model(entry, cls):
                engine = self._build(entry, cls)
                pooled = self.pool.track(entry.name, engine)
            with self._lock:
                self._engines[entry.name] = engine
                if pooled is not None:
                    self._runtimes[entry.name] = pooled
                self.picked[entry.name] = (label, skipped)
            return engine

    def _build(self, entry: ModelEntry, cls: type[Engine]) -> Engine:
        if entry.replicas or entry.fallbacks:  # spread over replicas, then fall back
            return RouterEngine(entry, self.settings, inner=cls, resolver=self)
        return cls(entry, self.settings)

    def runtime(self, name: str) -> Runtime:
        """The (pooled) runtime of a local model, loading it if needed."""
        engine = self.engine(name)
        with self._lock:
            pooled = self._runtimes.get(name)
        if pooled is not None:
            return pooled
        runtime = getattr(engine, "runtime", None)
        if runtime is None:
            raise TypeError(f"model {name!r} has no local runtime (engine {type(engine)})")
        return runtime

    def loaded(self) -> dict[str, Engine]:
        with self._lock:
            return dict(self._engines)

    def unload(self, name: str) -> bool:
        """Unload a model; requests in flight finish first."""
        with self._lock:
            engine = self._engines.pop(name, None)
            pooled = self._runtimes.pop(name, None)
        if engine is None:
            return False
        if pooled is not None:
            pooled.close()  # refuses new requests, waits for those in flight
        engine.close()
        self.pool.forget(name, engine)
        return True

    def _evicted(self, name: str) -> None:
        # Called by the pool, under our lock, for the idle model it is about to close.
        self._engines.pop(name, None)
        self._runtimes.pop(name, None)

    def close(self) -> None:
        for name in list(self.loaded()):
            self.unload(name)

    # --- models ------------------------------------------------------------------------

    def chat_model(self, name: str | None = None, **overrides: Any) -> BaseChatModel:
        """A LangChain chat model for entry `name` (default: `default_model`).

        Overrides (temperature, max_tokens, ...) apply to this instance only; the weights
        are shared with every other instance of the same entry."""
        engine = self.engine(name, "chat")
        with self._lock:
            pooled = self._runtimes.get(engine.entry.name)
        if pooled is not None:  # a local runtime: ChatLocal, which prepares in our pool
            overrides = {"runtime": pooled, "preparer": self.prepare, **overrides}
        return engine.chat_model(**overrides)

    def embeddings(self, name: str | None = None) -> Embeddings:
        return self.engine(name, "embeddings").embeddings()

    def load(self, entry: ModelEntry) -> Engine:
        """Load a served entry; any failure is a ModelLoadError for this model only."""
        try:
            return self.engine(entry.name, entry.kind)
        except Exception as exc:  # noqa: BLE001 - any load failure is this model's problem
            log.error("model %s failed to load: %s", entry.name, exc, exc_info=exc)
            raise ModelLoadError(entry.name, f"it failed to load ({exc})") from exc

    def describe(self, entry: ModelEntry) -> dict[str, Any]:
        """The pool's view of one entry (state, engine, memory, in flight), for admins."""
        return self.pool.describe(entry, dict(self.picked))
