"""Ingesting files into a knowledge base (chains.kb: layout, manifests, reading).

An ingest holds the KB's lock (threads and processes take turns), builds a complete new
version next to the live one and then swaps CURRENT (all or nothing). Files are read,
split, embedded and added in batches of BATCH chunks, so memory holds one batch, not a
whole file; binary and empty files are skipped (or, with `strict`, fail the ingest).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, Field

from chains.kb import (
    CURRENT,
    LOCK_TIMEOUT,
    MANIFEST,
    FileEntry,
    IngestError,
    Manifest,
    check_name,
    kb_lock,
    kb_root,
    live_dir,
    load_faiss,
    read_manifest,
    resolve_embeddings,
)
from chains.loaders import CHUNK_OVERLAP, LoadError, SkippedFile, collect_files, iter_chunks
from chains.stores import is_embedded, open_external_store
from chatbot.settings import Settings, get_settings

Progress = Callable[[str, int, int], None]  # (file being processed, bytes done, total bytes)
BATCH = 256  # chunks embedded and added at once: memory holds one batch, not a whole file


class IngestReport(BaseModel):
    kb: str
    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # file -> why (binary, no text)
    chunks: int = 0  # total chunks in the KB after the ingest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise IngestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _chunk_ids(source: str, digest: str, first: int, count: int) -> list[str]:
    return [
        hashlib.sha256(f"{source}\0{digest}\0{i}".encode()).hexdigest()[:32]
        for i in range(first, first + count)
    ]


def ingest(
    name: str,
    paths: Sequence[str | Path],
    *,
    embeddings: str | Embeddings | None = None,
    progress: Progress | None = None,
    strict: bool = False,
    lock_timeout: float = LOCK_TIMEOUT,
    settings: Settings | None = None,
) -> IngestReport:
    """Add or update files (txt, md, pdf, html, code; directories recursively) in KB `name`.

    All or nothing: if any file fails, the KB stays as it was and IngestError names it.
    Binary files and files without text are skipped (listed in `report.skipped`), or,
    with `strict`, fail the ingest too. Another ingest into the same KB (any process)
    is waited for up to `lock_timeout` seconds. `settings`: where KBs live and which
    vector store (default: the process's settings).
    """
    check_name(name)
    settings = settings or get_settings()
    root = kb_root(settings)
    if not paths:
        raise IngestError("no files given to ingest")
    try:
        files = collect_files(list(paths))
    except LoadError as exc:
        raise IngestError(str(exc)) from None
    if not files:
        raise IngestError(f"no supported files found in: {', '.join(map(str, paths))}")

    with kb_lock(name, root, lock_timeout):
        live = live_dir(name, root)
        old = read_manifest(name, settings) if live else None
        emb, emb_name = resolve_embeddings(embeddings, old.embeddings if old else None)
        embedded = old.store == "faiss" if old else is_embedded(settings.vector_store)
        manifest = (
            old.model_copy(deep=True)
            if old
            else Manifest(embeddings=emb_name, store="faiss" if embedded else "external")
        )
        if embedded:
            store = load_faiss(live, emb) if live and manifest.chunks else None
        else:
            store = open_external_store(settings.vector_store, name, emb)
        report = IngestReport(kb=name)
        written: list[str] = []  # chunk ids added in this run
        stale: list[str] = []  # ids replaced in an external store, dropped once published
        try:
            run = _Run(manifest, emb, embedded, report, written, stale, strict, progress)
            store = run.apply(files, store)
            if not manifest.files:
                reasons = "; ".join(f"{k}: {v}" for k, v in report.skipped.items())
                raise IngestError(f"nothing to ingest: {reasons}")
            report.chunks = manifest.chunks
            if report.added or report.updated or live is None:
                _publish(root / name, manifest, store if embedded else None)
        except BaseException:
            if not embedded and written and store is not None:
                with contextlib.suppress(Exception):  # best effort: leave no orphans
                    store.delete(written)
            raise
        if stale and store is not None:
            store.delete(stale)
        return report


class _Run:
    """One ingest's work: new and changed files go, in batches of chunks, into `store` (a
    private FAISS copy, or the external store) and into `manifest`."""

    def __init__(
        self,
        manifest: Manifest,
        emb: Embeddings,
        embedded: bool,
        report: IngestReport,
        written: list[str],
        stale: list[str],
        strict: bool,
        progress: Progress | None,
    ) -> None:
        self.manifest, self.emb, self.embedded = manifest, emb, embedded
        self.report, self.written, self.stale = report, written, stale
        self.strict, self.progress = strict, progress
        self.done = self.total = 0

    def apply(self, files: list[Path], store: VectorStore | None) -> VectorStore | None:
        """Returns the store (created on the first batch of a new KB)."""
        self.total = sum(_size(path) for path in files)
        for path in files:
            self._tick(str(path))
            try:
                store = self._file(path, store)
            except SkippedFile as exc:
                if self.strict:
                    raise IngestError(str(exc)) from None
                self.report.skipped[str(path)] = exc.reason
            except LoadError as exc:
                raise IngestError(str(exc)) from None
            self.done += _size(path)
        self._tick("")
        return store

    def _tick(self, label: str, within: int = 0) -> None:
        if self.progress:
            self.progress(label, min(self.done + within, self.total), self.total)

    def _file(self, path: Path, store: VectorStore | None) -> VectorStore | None:
        key, digest = str(path), _sha256(path)
        previous = self.manifest.files.get(key)
        if previous and previous.sha256 == digest:
            self.report.unchanged.append(key)
            return store
        ids: list[str] = []
        batch: list[Document] = []
        chars = 0  # of text embedded so far: about the bytes done, for the progress bar
        chunks = iter_chunks(path)
        while True:
            chunk = next(chunks, None)
            if chunk is not None:
                chunk.metadata["sha256"] = digest
                batch.append(chunk)
            if batch and (chunk is None or len(batch) >= BATCH):
                if not ids and previous:  # the file has new content: replace its chunks
                    if self.embedded and store is not None:
                        store.delete(previous.ids)  # FAISS: a private copy until published
                    else:
                        self.stale.extend(previous.ids)
                chars += sum(len(c.page_content) for c in batch) - CHUNK_OVERLAP * len(batch)
                batch_ids = _chunk_ids(key, digest, len(ids), len(batch))
                store = self._add(store, batch, batch_ids)
                ids.extend(batch_ids)
                self.written.extend(batch_ids)
                batch = []
                self._tick(key, max(chars, 0))
            if chunk is None:
                break
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.manifest.files[key] = FileEntry(sha256=digest, ids=ids, ingested_at=now)
        (self.report.updated if previous else self.report.added).append(key)
        return store

    def _add(self, store: VectorStore | None, batch: list[Document], ids: list[str]) -> Any:
        if store is None:
            from langchain_community.vectorstores import FAISS

            return FAISS.from_documents(batch, self.emb, ids=ids)
        store.add_documents(batch, ids=ids)
        return store


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _publish(home: Path, manifest: Manifest, store: VectorStore | None) -> None:
    """Write a complete new version in the KB's directory `home`, then atomically point
    CURRENT at it."""
    home.mkdir(parents=True, exist_ok=True)
    version = f"v-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    target = home / version
    try:
        target.mkdir()
        if store is not None:
            store.save_local(str(target))  # type: ignore[attr-defined]
        (target / MANIFEST).write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
        pointer = home / f".{CURRENT}.{uuid.uuid4().hex[:8]}"
        pointer.write_text(version, encoding="utf-8")
        os.replace(pointer, home / CURRENT)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    for child in home.iterdir():  # old versions and leftovers of crashed ingests
        if child.name in (version, CURRENT):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
