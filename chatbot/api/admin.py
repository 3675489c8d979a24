"""Admin routes for the model pool (behind the API key like every non-public path).

GET  /admin/models                 every served model: state, engine, memory, last use
POST /admin/models/{name}/load     load now (evicting idle models if over budget)
POST /admin/models/{name}/unload   unload; waits for requests in flight to finish
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request

from chatbot.api.errors import APIError
from chatbot.catalog import ModelCatalog
from chatbot.errors import PoolBusyError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])


def _catalog(request: Request) -> ModelCatalog:
    return request.app.state.chatbot.catalog


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    catalog = _catalog(request)
    entries = catalog.registry.served()
    data = [catalog.describe(e) for e in entries]
    return {"object": "list", "data": data, "memory": catalog.pool.usage()}


@router.post("/models/{name}/load")
async def load_model(name: str, request: Request) -> dict[str, Any]:
    catalog = _catalog(request)
    entry = catalog.served_entry(name, None)
    try:
        await asyncio.to_thread(catalog.engine, entry.name, entry.kind)
    except PoolBusyError:
        raise  # a 503 "pool_busy" (chatbot.api.errors)
    except Exception as exc:  # noqa: BLE001 - the load failure is reported to the admin
        log.error("model %s failed to load: %s", name, exc, exc_info=exc)
        raise APIError(503, f"model {name!r} failed to load: {exc}", code="load_failed") from exc
    return catalog.describe(entry)


@router.post("/models/{name}/unload")
async def unload_model(name: str, request: Request) -> dict[str, Any]:
    catalog = _catalog(request)
    entry = catalog.served_entry(name, None)
    was_loaded = await asyncio.to_thread(catalog.unload, entry.name)
    return {**catalog.describe(entry), "unloaded": was_loaded}
