"""Engines: what turns a registry entry into loaded weights or a client.

An engine class is found by name in the Python entry-point group `chatbot.engines`
(ours are declared in pyproject.toml; third-party packages add theirs the same way), or
by a dotted path `package.module:Class`. Adding a backend never edits the factory.
Custom providers (model_adapters.custom_provider.CustomProvider subclasses) are found the
same way, also in the group `chatbot.providers`, and adapt themselves to an Engine.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel

    from chatbot.registry import ModelEntry
    from chatbot.settings import Settings

GROUP = "chatbot.engines"
PROVIDERS = "chatbot.providers"  # custom providers (model_adapters.custom_provider)

# Used when package metadata is missing (e.g. running from a source tree not installed).
_BUILTIN = {
    "transformers": "model_adapters.transformers.engine:TransformersEngine",
    "sentence-transformers": "model_adapters.embeddings:SentenceTransformersEngine",
    "openai": "model_adapters.openai_provider:OpenAIEngine",
    "vllm": "model_adapters.vllm.engine:VLLMEngine",
    "llama-cpp": "model_adapters.llama_cpp:LlamaCppEngine",
}


class Engine:
    """One loaded backend for one registry entry. Subclasses load weights in __init__."""

    name: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str]] = frozenset({"chat"})
    needs_path: ClassVar[bool] = True

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        self.entry = entry
        self.settings = settings

    @classmethod
    def unavailable_reason(cls, entry: ModelEntry) -> str | None:
        """Why this engine cannot run `entry` on this host, or None if it can."""
        return None

    def chat_model(self, **overrides: Any) -> BaseChatModel:
        raise NotImplementedError(f"engine {self.name!r} does not serve chat models")

    def embeddings(self) -> Embeddings:
        raise NotImplementedError(f"engine {self.name!r} does not serve embeddings")

    def memory_bytes(self) -> int:
        """Resident size of the loaded weights (0 for remote clients)."""
        return 0

    def close(self) -> None:
        """Release weights / clients."""


def _load_object(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _entry_point_targets() -> dict[str, str]:
    targets: dict[str, str] = {}
    for group in (PROVIDERS, GROUP):  # an engine wins over a provider of the same name
        for ep in entry_points(group=group):
            targets[ep.name] = ep.value
    # Ours come from this source tree, not from package metadata that an older install
    # of this package may have left with other module paths.
    targets.update(_BUILTIN)
    return targets


def known_engines() -> list[str]:
    return sorted(_entry_point_targets())


def engine_class(name: str) -> type[Engine]:
    """Look an engine up by entry-point name or dotted path `pkg.mod:Class`."""
    # A dotted path needs no scan of installed packages' entry points (slow).
    target = name if ":" in name else _entry_point_targets().get(name)
    if target is None:
        raise LookupError(name)
    try:
        cls = _load_object(target)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"{name}: cannot import {target}: {exc}") from exc
    if callable(getattr(cls, "as_engine", None)):  # a CustomProvider adapts itself
        cls = cls.as_engine()
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise LookupError(
            f"{name}: {target} is not a chatbot.engines.Engine or CustomProvider subclass"
        )
    return cls


def pick_engine(entry: ModelEntry) -> tuple[type[Engine], dict[str, str]]:
    """First engine in the entry's preference order that can run here.

    Returns the class and, for every engine skipped, the reason it was skipped.
    """
    skipped: dict[str, str] = {}
    for name in entry.engines:
        cls = engine_class(name)
        reason = cls.unavailable_reason(entry)
        if reason is None:
            return cls, skipped
        skipped[name] = reason
    detail = "; ".join(f"{n}: {r}" for n, r in skipped.items())
    raise RuntimeError(f"model {entry.name!r}: no engine can run on this host ({detail})")
