"""`engine: sentence-transformers` - local embedding models."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from langchain_core.embeddings import Embeddings

from chatbot.engines import Engine
from chatbot.registry import ModelEntry
from chatbot.settings import Settings


class LocalEmbeddings(Embeddings):
    """LangChain Embeddings over one shared SentenceTransformer."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self._lock = threading.Lock()  # one encode at a time on the shared weights

    def _encode(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        with self._lock:
            vectors = self.model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        # Normalised here in float32: in bfloat16 (dtype auto) a unit vector's squared norm
        # was 1.0065, and cosine = dot product must hold for the stores.
        vectors = vectors.astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encode(list(texts)) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(self.model.tokenizer(t)["input_ids"]) for t in texts)


class SentenceTransformersEngine(Engine):
    name = "sentence-transformers"
    kinds = frozenset({"embeddings"})
    needs_path = True

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from sentence_transformers import SentenceTransformer

        from model_adapters.transformers.runtime import pick_device, pick_dtype

        super().__init__(entry, settings)
        device = pick_device(entry.options.device)
        # dtype "auto" as for chat models: bfloat16 where the CPU has native bf16 (about
        # 2.2x float32 for MiniLM, cosine to the float32 vectors >= 0.998; bench/kb_ingest).
        self.dtype = pick_dtype(entry.options.dtype, device)
        self.model = SentenceTransformer(
            str(entry.resolved_path or entry.path),
            device=device,
            trust_remote_code=entry.options.trust_remote_code,
            model_kwargs={"dtype": self.dtype},
        )
        self._embeddings = LocalEmbeddings(self.model, entry.name)

    def embeddings(self) -> LocalEmbeddings:
        return self._embeddings

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())
