"""The factory functions: thin calls on the default `ModelCatalog` (chatbot.catalog),
made on first use. Code that needs its own state (a second server, a test) builds its
own catalog instead: `ModelCatalog(registry)`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from chatbot.catalog import ModelCatalog

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel

    from chatbot.engines import Engine
    from chatbot.registry import Registry
    from chatbot.settings import Settings

_default: ModelCatalog | None = None
_default_lock = threading.Lock()


def default_catalog() -> ModelCatalog:
    """The process's default catalog (created on first use, not at import)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelCatalog()
        return _default


def get_registry() -> Registry:
    return default_catalog().registry


def set_registry(registry: Registry | None) -> None:
    """Use another registry (tests, `--config`). Loaded engines of removed names are closed."""
    default_catalog().set_registry(registry)


def get_engine(
    name: str | None = None, kind: str = "chat", settings: Settings | None = None
) -> Engine:
    """The loaded engine for a registry entry, loading it on first use."""
    return default_catalog().engine(name, kind)  # type: ignore[arg-type]


def loaded() -> dict[str, Engine]:
    return default_catalog().loaded()


def unload(name: str) -> bool:
    return default_catalog().unload(name)


def get_chat_model(name: str | None = None, **overrides: Any) -> BaseChatModel:
    """A LangChain chat model for registry entry `name` (default: `default_model`).

    Overrides (temperature, max_tokens, ...) apply to this instance only; the weights
    are shared with every other instance of the same entry.
    """
    return default_catalog().chat_model(name, **overrides)


def get_embeddings(name: str | None = None) -> Embeddings:
    return default_catalog().embeddings(name)


def __getattr__(name: str) -> Any:
    # `factory.picked` (engine picks) reads the default catalog's.
    if name == "picked":
        return default_catalog().picked
    raise AttributeError(name)
