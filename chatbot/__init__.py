"""One model registry -> LangChain chat models, an OpenAI-compatible API and LangServe routes."""

from chatbot.factory import get_chat_model, get_embeddings, get_registry, set_registry
from chatbot.registry import Registry, RegistryError, load_registry
from chatbot.settings import Settings, get_settings

__all__ = [
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
