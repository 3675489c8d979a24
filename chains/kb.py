"""Knowledge bases: layout, manifests, listing, search, delete (ingest: chains.ingest).

Layout for the default embedded store (FAISS), under `settings.data_dir/kb/NAME/`:

    CURRENT          the name of the live version directory (replaced atomically)
    v-<id>/          index.faiss, index.pkl, manifest.json

An ingest builds a complete new version next to the live one and then swaps CURRENT, so
a failed or interrupted ingest leaves the previous index intact. The manifest keeps each
file's SHA-256 and chunk ids: re-ingesting an unchanged file is a no-op, a changed file
replaces its old chunks instead of duplicating them.

With a server-grade store (settings.vector_store, see chains.stores) the chunks live in
the server and only the manifest is kept here.

The public functions take the caller's `settings` (the CLI's, the HTTP app's); without,
the process's (`get_settings()`). Helpers below them take the paths they need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, Field

from chains.stores import is_embedded, open_external_store
from chatbot.settings import Settings, get_settings

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_faiss_cache: dict[tuple[str, int], VectorStore] = {}  # (version dir, id(embeddings))

LOCK_TIMEOUT = 600.0  # seconds an ingest waits for another process's ingest into the KB


class KBError(ValueError):
    """Bad knowledge-base input; the message says which KB / file and why."""


class UnknownKB(KBError, LookupError):
    pass


class EmptyKB(KBError):
    pass


class IngestError(KBError):
    pass


class FileEntry(BaseModel):
    sha256: str
    ids: list[str]
    ingested_at: str


class Manifest(BaseModel):
    embeddings: str
    store: str = "faiss"  # "faiss" or "external" (never the URL: it may hold a password)
    files: dict[str, FileEntry] = Field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return sum(len(f.ids) for f in self.files.values())


class KBInfo(BaseModel):
    name: str
    files: int
    chunks: int
    embeddings: str
    store: str


# --- paths and manifests -----------------------------------------------------------


def kb_root(settings: Settings | None = None) -> Path:
    return Path((settings or get_settings()).data_dir).expanduser() / "kb"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KBError(
            f"invalid knowledge-base name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, not starting with '.')"
        )
    return name


def _thread_lock(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


@contextlib.contextmanager
def kb_lock(name: str, root: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive right to change KB `name` under `root`: threads of this process and other
    processes (two `chatbot kb ingest` at once) take turns; each sees the other's files."""
    root.mkdir(parents=True, exist_ok=True)
    # Outside the KB's own directory: delete_kb renames that away.
    lock = filelock.FileLock(root / f".{name}.lock", timeout=timeout)
    with _thread_lock(name):
        try:
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                log.warning("knowledge base %r: waiting for another ingest to finish", name)
                lock.acquire()
        except filelock.Timeout:
            raise KBError(
                f"knowledge base {name!r} is being changed by another process (waited "
                f"{timeout:.0f}s for {lock.lock_file}); try again when it is done"
            ) from None
        try:
            yield
        finally:
            lock.release()


def live_dir(name: str, root: Path) -> Path | None:
    pointer = root / name / CURRENT
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    live = root / name / version
    return live if live.is_dir() else None


def list_kbs(settings: Settings | None = None) -> list[KBInfo]:
    settings = settings or get_settings()
    root = kb_root(settings)
    infos = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if _NAME.match(child.name) and live_dir(child.name, root) is not None:
            m = read_manifest(child.name, settings)
            infos.append(
                KBInfo(
                    name=child.name,
                    files=len(m.files),
                    chunks=m.chunks,
                    embeddings=m.embeddings,
                    store=m.store,
                )
            )
    return infos


def read_manifest(name: str, settings: Settings | None = None) -> Manifest:
    live = live_dir(check_name(name), kb_root(settings))
    if live is None:
        known = [info.name for info in list_kbs(settings)]
        raise UnknownKB(
            f"unknown knowledge base {name!r} (known: {known or 'none'}); "
            f"create it with: chatbot kb ingest {name} PATH..."
        )
    return Manifest.model_validate_json((live / MANIFEST).read_text(encoding="utf-8"))


def resolve_embeddings(
    given: str | Embeddings | None, recorded: str | None
) -> tuple[Embeddings, str]:
    from chatbot.factory import get_embeddings, get_registry

    if isinstance(given, Embeddings):
        return given, recorded or getattr(given, "name", None) or type(given).__name__
    name = given or recorded or get_registry().default_embeddings
    if name is None:
        raise KBError("no embeddings model: add one under 'embeddings:' in the model registry")
    if recorded is not None and name != recorded:
        raise KBError(
            f"this knowledge base was built with embeddings {recorded!r}, not "
            f"{name!r}; delete it and ingest again to change the embeddings"
        )
    return get_embeddings(name), name


# --- reading -------------------------------------------------------------------------


def open_store(
    name: str, embeddings: str | Embeddings | None = None, settings: Settings | None = None
) -> VectorStore:
    """The vector store of knowledge base `name` (UnknownKB / EmptyKB if there is none)."""
    settings = settings or get_settings()
    manifest = read_manifest(name, settings)
    if manifest.chunks == 0:
        raise EmptyKB(f"knowledge base {name!r} is empty: ingest some files first")
    emb, _ = resolve_embeddings(embeddings, manifest.embeddings)
    if manifest.store != "faiss":
        spec = settings.vector_store
        if is_embedded(spec):
            raise KBError(
                f"knowledge base {name!r} lives in a vector-store server: set "
                "CHATBOT_VECTOR_STORE to it"
            )
        return open_external_store(spec, name, emb)
    live = live_dir(name, kb_root(settings))
    assert live is not None
    key = (str(live), id(emb))  # a version directory never changes once published
    with _locks_guard:
        store = _faiss_cache.get(key)
    if store is None:
        store = load_faiss(live, emb)
        with _locks_guard:
            while len(_faiss_cache) >= 16:
                _faiss_cache.pop(next(iter(_faiss_cache)))
            _faiss_cache[key] = store
    return store


def load_faiss(folder: Path, emb: Embeddings) -> VectorStore:
    from langchain_community.vectorstores import FAISS

    # The pickle is the docstore we wrote ourselves under data_dir, not user input.
    return FAISS.load_local(str(folder), emb, allow_dangerous_deserialization=True)


def search(name: str, query: str, k: int = 4, settings: Settings | None = None) -> list[Document]:
    return open_store(name, settings=settings).similarity_search(query, k=k)


def delete_kb(name: str, settings: Settings | None = None) -> None:
    """Remove knowledge base `name` (UnknownKB if there is none)."""
    settings = settings or get_settings()
    root = kb_root(settings)
    with kb_lock(name, root):
        manifest = read_manifest(name, settings)
        if manifest.store != "faiss" and manifest.chunks:
            emb, _ = resolve_embeddings(None, manifest.embeddings)
            store = open_external_store(settings.vector_store, name, emb)
            store.delete([i for f in manifest.files.values() for i in f.ids])
        home = root / name
        trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
        os.replace(home, trash)  # one rename: the KB is gone at once, then cleaned up
        shutil.rmtree(trash, ignore_errors=True)
