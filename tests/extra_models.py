"""Add registry entries for one test module, as a user would add them to models.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import chatbot
from chatbot.registry import Registry, parse_registry


@contextmanager
def extra_models(models: dict[str, Any], models_root: Path) -> Iterator[Registry]:
    """The process-wide registry plus `models`; on exit their engines are unloaded."""
    base = chatbot.get_registry()
    extra = parse_registry({"models": models}, models_root, source="<test>")
    merged = Registry(
        {**base.entries, **extra.entries},
        base.default_model,
        base.default_embeddings,
        [*base.serve, *extra.entries],
        source=base.source,
    )
    chatbot.set_registry(merged)
    try:
        yield merged
    finally:
        chatbot.set_registry(base)  # closes the engines of the added entries
