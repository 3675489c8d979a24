"""`engine: sentence-transformers` - local embedding models."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.embeddings import Embeddings

from chatbot.engines import Engine
from chatbot.registry import ModelEntry
from chatbot.settings import Settings


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: this worker only


class LocalEmbeddings(Embeddings):
    """LangChain Embeddings over one shared SentenceTransformer.

    With `workers` > 1 (CPU), a call's batches run on that many single-threaded workers at
    once rather than one batch at a time on all cores: small matmuls scale badly across
    cores, and on a shared machine every op's thread barrier waits for the slowest core
    (2-2.6x the chunks/s of one 2-thread encode on 2 busy cores, the same on quiet ones;
    bench/kb_ingest.py).
    """

    def __init__(self, model: Any, name: str, *, workers: int = 1, batch_size: int = 32) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one call at a time on the shared weights
        self._tokenizer = threading.Lock()  # fast tokenizers are not thread-safe
        self._pool = (
            ThreadPoolExecutor(workers, f"embed-{name}", initializer=_one_torch_thread)
            if workers > 1
            else None
        )

    def _encode(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        with self._lock:
            if self._pool is None or len(texts) <= self.batch_size:
                vectors = self.model.encode(
                    texts,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            else:
                vectors = self._parallel(texts)
        # Normalised here in float32: in bfloat16 (dtype auto) a unit vector's squared norm
        # was 1.0065, and cosine = dot product must hold for the stores.
        vectors = vectors.astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.tolist()

    def _parallel(self, texts: list[str]) -> Any:
        """As SentenceTransformer.encode (batches of similar length), batches on the pool."""
        import numpy as np

        order = np.argsort([-len(text) for text in texts], kind="stable")
        batches = [
            [texts[i] for i in order[start : start + self.batch_size]]
            for start in range(0, len(texts), self.batch_size)
        ]
        assert self._pool is not None
        parts = list(self._pool.map(self._forward, batches))
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        return vectors

    def _forward(self, batch: list[str]) -> Any:
        import torch
        from sentence_transformers.util import batch_to_device

        with self._tokenizer:
            features = self.model.preprocess(batch)
        with torch.inference_mode():
            out = self.model(batch_to_device(features, self.model.device))
        return out["sentence_embedding"].float().cpu().numpy()

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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class SentenceTransformersEngine(Engine):
    name = "sentence-transformers"
    kinds = frozenset({"embeddings"})
    needs_path = True

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from sentence_transformers import SentenceTransformer

        from model_adapters.cpu import serving_threads
        from model_adapters.transformers.runtime import pick_device, pick_dtype

        super().__init__(entry, settings)
        opts = entry.options
        device = pick_device(opts.device)
        # dtype "auto" as for chat models: bfloat16 where the CPU has native bf16 (about
        # 3x float32 for MiniLM, cosine to the float32 vectors >= 0.9999; bench/kb_ingest).
        self.dtype = pick_dtype(opts.dtype, device)
        self.model = SentenceTransformer(
            str(entry.resolved_path or entry.path),
            device=device,
            trust_remote_code=opts.trust_remote_code,
            model_kwargs={"dtype": self.dtype},
        )
        workers = serving_threads(opts.threads, settings.threads) if device == "cpu" else 1
        self._embeddings = LocalEmbeddings(
            self.model, entry.name, workers=workers, batch_size=opts.batch_size
        )

    def embeddings(self) -> LocalEmbeddings:
        return self._embeddings

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def close(self) -> None:
        self._embeddings.close()
