"""One model registry -> LangChain chat models, an OpenAI-compatible API and LangServe routes.

Attributes load on first use (PEP 562), so `import chatbot` (and any submodule) stays
cheap: no registry is read and no backend is imported until one is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatbot.catalog import ModelCatalog
    from chatbot.factory import get_chat_model, get_embeddings, get_registry, set_registry
    from chatbot.registry import Registry, RegistryError, load_registry
    from chatbot.settings import Settings, get_settings

_LAZY = {
    "ModelCatalog": "chatbot.catalog",
    "Registry": "chatbot.registry",
    "RegistryError": "chatbot.registry",
    "Settings": "chatbot.settings",
    "get_chat_model": "chatbot.factory",
    "get_embeddings": "chatbot.factory",
    "get_registry": "chatbot.factory",
    "get_settings": "chatbot.settings",
    "load_registry": "chatbot.registry",
    "set_registry": "chatbot.factory",
}

__all__ = [
    "ModelCatalog",
    "Registry",
    "RegistryError",
    "Settings",
    "get_chat_model",
    "get_embeddings",
    "get_registry",
    "get_settings",
    "load_registry",
    "set_registry",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chatbot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
