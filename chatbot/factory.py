"""The factory: registry entry -> loaded engine (once per process) -> chat model / embeddings."""

from __future__ import annotations

import logging
import threading
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel

from chatbot.engines import Engine, pick_engine
from chatbot.pool import pool
from chatbot.registry import Registry, load_registry
from chatbot.settings import Settings, get_settings

log = logging.getLogger(__name__)

_lock = threading.RLock()
_registry: Registry | None = None
_engines: dict[str, Engine] = {}
_loading: dict[str, threading.Lock] = {}
picked: dict[str, tuple[str, dict[str, str]]] = {}  # name -> (engine, {skipped: reason})


def get_registry() -> Registry:
    global _registry
    with _lock:
        if _registry is None:
            s = get_settings()
            _registry = load_registry(s.config, s.models_root)
        return _registry


def set_registry(registry: Registry | None) -> None:
    """Use another registry (tests, `--config`). Loaded engines of removed names are closed."""
    global _registry
    with _lock:
        _registry = registry
        for name in list(_engines):
            if registry is None or name not in registry.entries:
                unload(name)


def get_engine(
    name: str | None = None, kind: str = "chat", settings: Settings | None = None
) -> Engine:
    """The loaded engine for a registry entry, loading it on first use (once, even if
    many threads ask at the same time)."""
    entry = get_registry().get(name, kind)  # type: ignore[arg-type]
    with _lock:
        if entry.name in _engines:
            pool.touch(entry.name)
            return _engines[entry.name]
        gate = _loading.setdefault(entry.name, threading.Lock())
    with gate:
        with _lock:
            if entry.name in _engines:
                return _engines[entry.name]
        cls, skipped = pick_engine(entry)
        for other, reason in skipped.items():
            log.info("model %s: engine %s skipped: %s", entry.name, other, reason)
        log.info("model %s: loading with engine %s", entry.name, cls.name or cls.__name__)
        # The pool evicts idle models first if a memory budget is set.
        with pool.loading_model(entry, cls):
            engine = cls(entry, settings or get_settings())
            pool.track(entry.name, engine)
        with _lock:
            _engines[entry.name] = engine
            picked[entry.name] = (cls.name or cls.__name__, skipped)
        return engine


def loaded() -> dict[str, Engine]:
    with _lock:
        return dict(_engines)


def unload(name: str) -> bool:
    with _lock:
        engine = _engines.pop(name, None)
    if engine is not None:
        engine.close()  # a pooled runtime waits for requests in flight first
        pool.forget(name, engine)
    return engine is not None


def get_chat_model(name: str | None = None, **overrides: Any) -> BaseChatModel:
    """A LangChain chat model for registry entry `name` (default: `default_model`).

    Overrides (temperature, max_tokens, ...) apply to this instance only; the weights
    are shared with every other instance of the same entry.
    """
    return get_engine(name, "chat").chat_model(**overrides)


def get_embeddings(name: str | None = None) -> Embeddings:
    return get_engine(name, "embeddings").embeddings()
