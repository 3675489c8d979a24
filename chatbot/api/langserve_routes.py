"""LangServe routes. The only module that imports langserve (it is archived upstream:
swapping it out touches this file alone).

Each served chat model is at `/models/{name}` (invoke, batch, stream, stream_log,
stream_events, playground). Chains are mounted with `add_runnable_routes(app,
"/chains/{name}", runnable)`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from langchain_core.runnables import Runnable

from chatbot.api.models import chat_runnable
from chatbot.registry import Registry


def add_runnable_routes(app: FastAPI, path: str, runnable: Runnable, **kwargs: Any) -> None:
    """Serve `runnable` at `path` the LangServe way (RemoteRunnable talks to it)."""
    from langserve import add_routes

    kwargs.setdefault("enable_feedback_endpoint", False)
    add_routes(app, runnable, path=path, **kwargs)


def add_model_routes(app: FastAPI, registry: Registry) -> list[str]:
    """`/models/{name}` for each served chat model; returns the paths added."""
    paths = []
    for entry in registry.served("chat"):
        path = f"/models/{entry.name}"
        add_runnable_routes(app, path, chat_runnable(entry.name))
        paths.append(path)
    return paths
