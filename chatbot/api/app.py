"""`create_app(settings=None) -> FastAPI`: one process serving every model in the
registry three ways (OpenAI-compatible /v1, LangServe /models/{name}, ops routes).

Settings configure the server (keys, CORS, limits, timeouts). Models come from a
`ModelCatalog` held in the app state: the process's default one (chatbot.factory,
`chatbot serve --config` sets its registry first) unless `catalog=` gives the app its
own, so two apps in one process can serve from separate state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from chatbot import factory
from chatbot.api import admin, langserve_routes, ops, ui
from chatbot.api.anthropic import routes as anthropic_routes
from chatbot.api.anthropic.protocol import error_response as anthropic_error_response
from chatbot.api.anthropic.protocol import stream_end as anthropic_stream_end
from chatbot.api.drain import ShutdownDrain
from chatbot.api.errors import ErrorForms, install_error_handlers
from chatbot.api.metrics import Metrics
from chatbot.api.models import ModelLoader
from chatbot.api.openai import routes as openai_routes
from chatbot.api.responses import routes as responses_routes
from chatbot.api.responses.protocol import stream_end as responses_stream_end
from chatbot.api.responses.store import ResponseStore
from chatbot.catalog import ModelCatalog
from chatbot.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class AppState:
    """What routes reach through `request.app.state.chatbot`."""

    settings: Settings
    catalog: ModelCatalog
    metrics: Metrics
    loader: ModelLoader
    drain: ShutdownDrain = field(default_factory=ShutdownDrain)  # ends requests at shutdown
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(
    settings: Settings | None = None,
    *,
    show_progress: bool = True,
    catalog: ModelCatalog | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    catalog = catalog or factory.default_catalog()
    catalog.registry  # noqa: B018 - fails fast (naming the field) on a bad registry
    state = AppState(
        settings=settings, catalog=catalog, metrics=Metrics(), loader=ModelLoader(catalog)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: /health answers at once, /ready once loading is done;
        # a request for a model still loading waits for it.
        state.loader.start(show_progress=show_progress)
        yield
        app.state.responses.close()

    app = FastAPI(
        title="chatbot",
        version="0.1.0",
        description="OpenAI-compatible API and LangServe routes for the model registry.",
        lifespan=lifespan,
    )
    app.state.chatbot = state
    app.state.responses = ResponseStore(settings.data_dir / "responses.sqlite3")
    # Anthropic's error JSON under /v1/messages, OpenAI's elsewhere: for the routes'
    # handlers, the middleware's own answers (401, 413, 429, 503) and streams cut at shutdown.
    errors = ErrorForms(
        {"/v1/messages": anthropic_error_response},
        stream_ends={"/v1/messages": anthropic_stream_end, "/v1/responses": responses_stream_end},
    )
    install_error_handlers(app, errors)
    app.include_router(ops.router)
    app.include_router(openai_routes.router)
    app.include_router(responses_routes.router, prefix="/v1")  # OpenAI Responses
    app.include_router(anthropic_routes.router, prefix="/v1")  # Anthropic Messages
    app.include_router(admin.router)  # /admin/models: the model pool
    langserve_routes.add_model_routes(app, catalog)
    langserve_routes.add_chain_routes(app, catalog, settings)  # /chains/{rag,conversation,agent}
    app.include_router(ui.router)  # the chat page at / and its /ui/api routes
    app.add_middleware(langserve_routes.StreamErrorEvents)  # innermost: sees the exception
    ops.install_middleware(
        app,
        settings,
        state.metrics,
        state.drain,
        public_paths=ui.PUBLIC_PATHS,
        errors=errors,
    )
    return app
