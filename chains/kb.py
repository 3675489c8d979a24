"""Knowledge bases: ingest files into a vector store, list them, delete them.

Layout for the default embedded store (FAISS), under `settings.data_dir/kb/NAME/`:

    CURRENT          the name of the live version directory (replaced atomically)
    v-<id>/          index.faiss, index.pkl, manifest.json

An ingest builds a complete new version next to the live one and then swaps CURRENT, so
a failed or interrupted ingest leaves the previous index intact. The manifest keeps each
file's SHA-256 and chunk ids: re-ingesting an unchanged file is a no-op, a changed file
replaces its old chunks instead of duplicating them.

With a server-grade store (settings.vector_store, see chains.stores) the chunks live in
the server and only the manifest is kept here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, Field

from chains.loaders import LoadError, collect_files, load_and_split
from chains.stores import is_embedded, open_external_store
from chatbot.settings import get_settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_faiss_cache: dict[tuple[str, int], VectorStore] = {}  # (version dir, id(embeddings))

Progress = Callable[[str, int, int], None]  # (file being processed, done, total)


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


class IngestReport(BaseModel):
    kb: str
    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    chunks: int = 0  # total chunks in the KB after the ingest


# --- paths and manifests -----------------------------------------------------------


def kb_root() -> Path:
    return Path(get_settings().data_dir).expanduser() / "kb"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise KBError(
            f"invalid knowledge-base name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, not starting with '.')"
        )
    return name


def _lock(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


def _live_dir(name: str) -> Path | None:
    pointer = kb_root() / name / _CURRENT
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    live = kb_root() / name / version
    return live if live.is_dir() else None


def list_kbs() -> list[KBInfo]:
    root = kb_root()
    infos = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if _NAME.match(child.name) and _live_dir(child.name) is not None:
            m = read_manifest(child.name)
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


def read_manifest(name: str) -> Manifest:
    live = _live_dir(check_name(name))
    if live is None:
        known = [info.name for info in list_kbs()]
        raise UnknownKB(
            f"unknown knowledge base {name!r} (known: {known or 'none'}); "
            f"create it with: chatbot kb ingest {name} PATH..."
        )
    return Manifest.model_validate_json((live / _MANIFEST).read_text(encoding="utf-8"))


def _resolve_embeddings(
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


def open_store(name: str, embeddings: str | Embeddings | None = None) -> VectorStore:
    """The vector store of knowledge base `name` (UnknownKB / EmptyKB if there is none)."""
    manifest = read_manifest(name)
    if manifest.chunks == 0:
        raise EmptyKB(f"knowledge base {name!r} is empty: ingest some files first")
    emb, _ = _resolve_embeddings(embeddings, manifest.embeddings)
    if manifest.store != "faiss":
        spec = get_settings().vector_store
        if is_embedded(spec):
            raise KBError(
                f"knowledge base {name!r} lives in a vector-store server: set "
                "CHATBOT_VECTOR_STORE to it"
            )
        return open_external_store(spec, name, emb)
    live = _live_dir(name)
    assert live is not None
    key = (str(live), id(emb))  # a version directory never changes once published
    with _locks_guard:
        store = _faiss_cache.get(key)
    if store is None:
        store = _load_faiss(live, emb)
        with _locks_guard:
            while len(_faiss_cache) >= 16:
                _faiss_cache.pop(next(iter(_faiss_cache)))
            _faiss_cache[key] = store
    return store


def _load_faiss(folder: Path, emb: Embeddings) -> VectorStore:
    from langchain_community.vectorstores import FAISS

    # The pickle is the docstore we wrote ourselves under data_dir, not user input.
    return FAISS.load_local(str(folder), emb, allow_dangerous_deserialization=True)


def search(name: str, query: str, k: int = 4) -> list[Document]:
    return open_store(name).similarity_search(query, k=k)


# --- writing -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise IngestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _chunk_ids(source: str, digest: str, count: int) -> list[str]:
    return [
        hashlib.sha256(f"{source}\0{digest}\0{i}".encode()).hexdigest()[:32] for i in range(count)
    ]


def ingest(
    name: str,
    paths: Sequence[str | Path],
    *,
    embeddings: str | Embeddings | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Add or update files (txt, md, pdf, html, code; directories recursively) in KB `name`.

    All or nothing: if any file fails, the KB stays as it was and IngestError names it.
    """
    check_name(name)
    if not paths:
        raise IngestError("no files given to ingest")
    try:
        files = collect_files(list(paths))
    except LoadError as exc:
        raise IngestError(str(exc)) from None
    if not files:
        raise IngestError(f"no supported files found in: {', '.join(map(str, paths))}")

    with _lock(name):
        live = _live_dir(name)
        old = read_manifest(name) if live else None
        emb, emb_name = _resolve_embeddings(embeddings, old.embeddings if old else None)
        embedded = old.store == "faiss" if old else is_embedded(get_settings().vector_store)
        manifest = (
            old.model_copy(deep=True)
            if old
            else Manifest(embeddings=emb_name, store="faiss" if embedded else "external")
        )
        if embedded:
            store = _load_faiss(live, emb) if live and manifest.chunks else None
        else:
            store = open_external_store(get_settings().vector_store, name, emb)
        report = IngestReport(kb=name)
        written: list[str] = []  # chunk ids added in this run
        stale: list[str] = []  # ids replaced in an external store, dropped once published
        try:
            store = _apply(files, manifest, store, emb, embedded, report, written, stale, progress)
            report.chunks = manifest.chunks
            if report.added or report.updated or live is None:
                _publish(name, manifest, store if embedded else None)
        except BaseException:
            if not embedded and written and store is not None:
                with contextlib.suppress(Exception):  # best effort: leave no orphans
                    store.delete(written)
            raise
        if stale and store is not None:
            store.delete(stale)
        return report


def _apply(
    files: list[Path],
    manifest: Manifest,
    store: VectorStore | None,
    emb: Embeddings,
    embedded: bool,
    report: IngestReport,
    written: list[str],
    stale: list[str],
    progress: Progress | None,
) -> VectorStore | None:
    """Add new and changed files to `store` (a private FAISS copy, or the external store)
    and to `manifest`; returns the store (created on the first file of a new KB)."""
    for done, path in enumerate(files):
        if progress:
            progress(str(path), done, len(files))
        key, digest = str(path), _sha256(path)
        previous = manifest.files.get(key)
        if previous and previous.sha256 == digest:
            report.unchanged.append(key)
            continue
        try:
            chunks = load_and_split(path)
        except LoadError as exc:
            raise IngestError(str(exc)) from None
        ids = _chunk_ids(key, digest, len(chunks))
        for chunk in chunks:
            chunk.metadata["sha256"] = digest
        if previous and embedded and store is not None:
            store.delete(previous.ids)  # FAISS: a private copy until published
        elif previous:
            stale.extend(previous.ids)
        if store is None:
            from langchain_community.vectorstores import FAISS

            store = FAISS.from_documents(chunks, emb, ids=ids)
        else:
            store.add_documents(chunks, ids=ids)
        written.extend(ids)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest.files[key] = FileEntry(sha256=digest, ids=ids, ingested_at=now)
        (report.updated if previous else report.added).append(key)
    if progress:
        progress("", len(files), len(files))
    return store


def _publish(name: str, manifest: Manifest, store: VectorStore | None) -> None:
    """Write a complete new version, then atomically point CURRENT at it."""
    home = kb_root() / name
    home.mkdir(parents=True, exist_ok=True)
    version = f"v-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    target = home / version
    try:
        target.mkdir()
        if store is not None:
            store.save_local(str(target))  # type: ignore[attr-defined]
        (target / _MANIFEST).write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
        pointer = home / f".{_CURRENT}.{uuid.uuid4().hex[:8]}"
        pointer.write_text(version, encoding="utf-8")
        os.replace(pointer, home / _CURRENT)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    for child in home.iterdir():  # old versions and leftovers of crashed ingests
        if child.name in (version, _CURRENT):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def delete_kb(name: str) -> None:
    """Remove knowledge base `name` (UnknownKB if there is none)."""
    with _lock(name):
        manifest = read_manifest(name)
        if manifest.store != "faiss" and manifest.chunks:
            emb, _ = _resolve_embeddings(None, manifest.embeddings)
            store = open_external_store(get_settings().vector_store, name, emb)
            store.delete([i for f in manifest.files.values() for i in f.ids])
        home = kb_root() / name
        trash = kb_root() / f".trash-{name}-{uuid.uuid4().hex[:8]}"
        os.replace(home, trash)  # one rename: the KB is gone at once, then cleaned up
        shutil.rmtree(trash, ignore_errors=True)
