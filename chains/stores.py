"""Server-grade vector stores for knowledge bases, through LangChain's VectorStore interface.

`settings.vector_store` (env CHATBOT_VECTOR_STORE) picks the store:

- `faiss` (default): embedded, persisted under `data_dir/kb/NAME` (see chains.kb).
- `postgresql+psycopg://user:pw@host/db`: pgvector via `langchain-postgres`.
- `chroma://host:port`: a Chroma server via `langchain-chroma`.
- `package.module:factory`: any callable `factory(collection: str, embeddings) -> VectorStore`.

One collection per knowledge base, named after it.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore


class StoreConfigError(ValueError):
    """settings.vector_store names a store that cannot be used here."""


def is_embedded(spec: str) -> bool:
    return spec.strip().lower() in ("", "faiss")


def _need(module: str, package: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StoreConfigError(
            f"vector_store needs the {package!r} package: pip install {package}"
        ) from None


def open_external_store(spec: str, collection: str, embeddings: Embeddings) -> VectorStore:
    """The server-grade store `spec` for one knowledge base (collection)."""
    if spec.startswith(("postgresql", "postgres")):
        pg = _need("langchain_postgres", "langchain-postgres")
        return pg.PGVector(  # type: ignore[attr-defined]
            embeddings=embeddings, collection_name=collection, connection=spec, use_jsonb=True
        )
    if spec.startswith("chroma://"):
        chroma = _need("langchain_chroma", "langchain-chroma")
        client_mod = _need("chromadb", "chromadb")
        url = urlparse(spec)
        client = client_mod.HttpClient(host=url.hostname or "localhost", port=url.port or 8000)  # type: ignore[attr-defined]
        return chroma.Chroma(  # type: ignore[attr-defined]
            collection_name=collection, embedding_function=embeddings, client=client
        )
    if ":" in spec and "://" not in spec:
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise StoreConfigError(f"vector_store {spec!r}: cannot import: {exc}") from None
        store = factory(collection, embeddings)
        if not isinstance(store, VectorStore):
            raise StoreConfigError(
                f"vector_store {spec!r} returned {type(store).__name__}, "
                "not a langchain_core VectorStore"
            )
        return store
    raise StoreConfigError(
        f"vector_store {spec!r}: expected 'faiss', a postgresql+psycopg:// or chroma:// URL, "
        "or 'module:factory'"
    )
