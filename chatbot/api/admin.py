"""Admin routes for the model pool (behind the API key like every non-public path).

GET  /admin/models                 every served model: state, engine, memory, last use
POST /admin/models/{name}/load     load now (evicting idle models if over budget)
POST /admin/models/{name}/unload   unload; waits for requests in flight to finish
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter

from chatbot import factory
from chatbot.api.errors import APIError
from chatbot.pool import PoolBusyError, pool
from chatbot.registry import ModelEntry

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])


def _entry(name: str) -> ModelEntry:
    registry = factory.get_registry()
    entry = registry.entries.get(name)
    if entry is None or name not in registry.serve:
        raise APIError(404, f"The model '{name}' does not exist", code="model_not_found")
    return entry


@router.get("/models")
async def list_models() -> dict[str, Any]:
    entries = factory.get_registry().served()
    return {"object": "list", "data": [pool.describe(e) for e in entries], "memory": pool.usage()}


@router.post("/models/{name}/load")
async def load_model(name: str) -> dict[str, Any]:
    entry = _entry(name)
    try:
        await asyncio.to_thread(factory.get_engine, entry.name, entry.kind)
    except PoolBusyError as exc:
        raise APIError(503, str(exc), code="pool_busy", headers={"Retry-After": "5"}) from exc
    except Exception as exc:  # noqa: BLE001 - the load failure is reported to the admin
        log.error("model %s failed to load: %s", name, exc, exc_info=exc)
        raise APIError(503, f"model {name!r} failed to load: {exc}", code="load_failed") from exc
    return pool.describe(entry)


@router.post("/models/{name}/unload")
async def unload_model(name: str) -> dict[str, Any]:
    entry = _entry(name)
    was_loaded = await asyncio.to_thread(factory.unload, entry.name)
    return {**pool.describe(entry), "unloaded": was_loaded}
