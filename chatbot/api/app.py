"""`create_app(settings=None) -> FastAPI`: one process serving every model in the
registry three ways (OpenAI-compatible /v1, LangServe /models/{name}, ops routes).

Settings configure the server (keys, CORS, limits, timeouts). The model registry is the
process-wide one from chatbot.factory (`chatbot serve --config` sets it first).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

import chatbot
from chains.serving import add_chain_routes
from chatbot import factory
from chatbot.api import admin, langserve_routes, openai_routes, ops
from chatbot.api.errors import install_error_handlers
from chatbot.api.metrics import Metrics
from chatbot.api.models import ModelLoader
from chatbot.api.responses.store import ResponseStore
from chatbot.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class AppState:
    """What routes reach through `request.app.state.chatbot`."""

    settings: Settings
    metrics: Metrics
    loader: ModelLoader
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(settings: Settings | None = None, *, show_progress: bool = True) -> FastAPI:
    settings = settings or get_settings()
    registry = factory.get_registry()  # fails fast (naming the field) on a bad registry
    state = AppState(settings=settings, metrics=Metrics(), loader=ModelLoader(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: /health answers at once, /ready once loading is done;
        # a request for a model still loading waits for it.
        state.loader.start(show_progress=show_progress)
        yield
        app.state.responses.close()

    app = FastAPI(
        title="chatbot",
        version=getattr(chatbot, "__version__", "0.1.0"),
        description="OpenAI-compatible API and LangServe routes for the model registry.",
        lifespan=lifespan,
    )
    app.state.chatbot = state
    app.state.responses = ResponseStore(settings.data_dir / "responses.sqlite3")
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai_routes.router)
    app.include_router(admin.router)  # /admin/models: the model pool
    langserve_routes.add_model_routes(app, registry)
    add_chain_routes(app)  # /chains/{rag,conversation,agent}
    app.add_middleware(langserve_routes.StreamErrorEvents)  # innermost: sees the exception
    ops.install_middleware(app, settings, state.metrics)
    return app
