"""The chat page at `/` (static files in chatbot/web) and the few JSON routes it needs
beside the public API: the default model, knowledge bases (list, upload into one) and
the conversation chain's stored conversations (list, read, delete, append a turn).

The page itself talks to the public API (/v1/models, /chains/*/stream_events); these
routes need the same API key as every other one. Only the static files are public (a
browser cannot send a key for a page it has not loaded yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from langchain_core.messages import messages_from_dict, messages_to_dict
from pydantic import BaseModel, Field

from chatbot.api.errors import APIError
from chatbot.settings import Settings

WEB = Path(__file__).resolve().parent.parent / "web"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}
ASSETS = {
    f"/ui/{p.relative_to(WEB).as_posix()}": p
    for p in WEB.rglob("*")
    if p.is_file() and p.suffix in _TYPES
}
PUBLIC_PATHS = frozenset({"/", *ASSETS})

pages = APIRouter(tags=["web page"])


@pages.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(
        WEB / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


@pages.get("/ui/{path:path}", include_in_schema=False)
async def asset(path: str) -> FileResponse:
    file = ASSETS.get(f"/ui/{path}")
    if file is None:
        raise APIError(404, f"no such file: /ui/{path}", code="not_found")
    return FileResponse(file, media_type=_TYPES[file.suffix], headers={"Cache-Control": "no-cache"})


# --- JSON routes ----------------------------------------------------------------------

api = APIRouter(prefix="/ui/api", tags=["web page"])


@api.get("/config")
async def config(request: Request) -> dict[str, Any]:
    """What /v1/models does not say: which chat model is the default."""
    return {"default_model": request.app.state.chatbot.catalog.registry.default_model}


@api.get("/kbs")
async def kbs(request: Request) -> dict[str, Any]:
    from chains.kb import list_kbs

    infos = await asyncio.to_thread(list_kbs, request.app.state.chatbot.settings)
    return {"data": [i.model_dump() for i in infos]}


@api.get("/conversations")
async def conversations(request: Request) -> dict[str, Any]:
    from chains.conversation import history_url, list_sessions

    url = history_url(request.app.state.chatbot.settings)
    return {"data": [s.model_dump() for s in await asyncio.to_thread(list_sessions, url)]}


def _history(request: Request, session_id: str) -> Any:
    from chains.conversation import get_history, history_url

    try:
        return get_history(session_id, history_url(request.app.state.chatbot.settings))
    except ValueError as exc:
        raise APIError(400, str(exc), param="session_id") from None


@api.get("/conversations/{session_id}")
async def conversation(request: Request, session_id: str) -> dict[str, Any]:
    messages = await _history(request, session_id).aget_messages()
    return {"session_id": session_id, "messages": messages_to_dict(messages)}


@api.delete("/conversations/{session_id}")
async def delete_conversation(request: Request, session_id: str) -> dict[str, Any]:
    await _history(request, session_id).aclear()
    return {"session_id": session_id, "deleted": True}


class Turn(BaseModel):
    """Messages as LangChain dicts ({"type": "human", "data": {"content": ...}})."""

    messages: list[dict[str, Any]] = Field(min_length=1, max_length=2)


@api.post("/conversations/{session_id}/messages")
async def add_turn(request: Request, session_id: str, turn: Turn) -> dict[str, Any]:
    """Keep a knowledge-base or agent turn in the conversation (those chains keep no
    history themselves), so that it is there after a reload."""
    try:
        messages = messages_from_dict(turn.messages)
    except (KeyError, ValueError, TypeError) as exc:
        raise APIError(400, f"messages: invalid message ({exc})", param="messages") from None
    await _history(request, session_id).aadd_messages(messages)
    return {"session_id": session_id, "added": len(messages)}


# --- upload into a knowledge base ---------------------------------------------------


def _upload_dir(settings: Settings, kb: str) -> Path:
    return Path(settings.data_dir).expanduser().resolve() / "uploads" / kb


def _safe_name(name: str | None) -> str:
    base = Path(name or "").name
    if not base or base.startswith("."):
        raise APIError(400, f"files: invalid file name {name!r}", param="files")
    return base


def _local(exc: Exception, folder: Path) -> str:
    # The message names the upload by its path on the server: say just its name.
    return str(exc).replace(f"{folder}{os.sep}", "")


def _save(files: list[tuple[str, bytes]], folder: Path) -> tuple[list[Path], list[Path]]:
    """Write the uploads; returns (paths, previous versions kept aside as .prev)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, kept = [], []
    for name, data in files:
        path = folder / name
        if path.exists():
            prev = path.with_name(f".{name}.prev")
            os.replace(path, prev)
            kept.append(prev)
        path.write_bytes(data)
        paths.append(path)
    return paths, kept


def _undo(paths: list[Path], kept: list[Path]) -> None:
    """A failed ingest leaves the KB as it was: put the upload folder back too."""
    for path in paths:
        path.unlink(missing_ok=True)
    for prev in kept:
        os.replace(prev, prev.with_name(prev.name[1 : -len(".prev")]))


@api.post("/kbs/{name}/files")
async def upload(
    request: Request, name: str, files: list[UploadFile] = File(...)
) -> StreamingResponse:
    """Ingest uploaded files into KB `name` (created if new) with `chatbot kb ingest`'s
    rules. Answers NDJSON: `{"file", "done", "total"}` lines while it works, then
    `{"report": ...}` or `{"error": {...}}`. Bad names and unsupported files are a 400."""
    from chains import ingest, kb
    from chains.loaders import LoadError, collect_files

    try:
        kb.check_name(name)
    except kb.KBError as exc:
        raise APIError(400, str(exc), param="name") from None
    uploads = [(_safe_name(f.filename), await f.read()) for f in files]
    names = [n for n, _ in uploads]
    if len(set(names)) != len(names):  # one previous version per name can be kept aside
        dup = next(n for n in names if names.count(n) > 1)
        raise APIError(400, f"files: {dup!r} is uploaded twice", param="files")
    settings = request.app.state.chatbot.settings  # this app's, not the process's
    folder = _upload_dir(settings, name)
    paths, kept = await asyncio.to_thread(_save, uploads, folder)
    try:
        if not collect_files(paths):
            raise LoadError(f"no supported files among: {', '.join(n for n, _ in uploads)}")
    except (LoadError, kb.KBError) as exc:
        _undo(paths, kept)
        raise APIError(400, _local(exc, folder), param="files") from None

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def progress(path: str, done: int, total: int) -> None:
        line = {"file": Path(path).name, "done": done, "total": total}
        loop.call_soon_threadsafe(queue.put_nowait, line)

    async def lines() -> AsyncIterator[bytes]:
        task = asyncio.ensure_future(
            asyncio.to_thread(ingest.ingest, name, paths, progress=progress, settings=settings)
        )
        while not (task.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield (json.dumps(getter.result()) + "\n").encode()
            else:
                getter.cancel()
        try:
            report = task.result()
        except (kb.KBError, ValueError, OSError) as exc:
            _undo(paths, kept)
            body = APIError(400, _local(exc, folder), param="files").body()
            yield (json.dumps(body) + "\n").encode()
            return
        for prev in kept:
            with contextlib.suppress(OSError):
                prev.unlink()
        yield (json.dumps({"report": report.model_dump()}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


router = APIRouter()
router.include_router(api)  # before pages: /ui/{path} would match /ui/api/... too
router.include_router(pages)
