"""`engine: transformers` - local Hugging Face models (CPU, CUDA, MPS; GPTQ checkpoints and
GGUF files too: see model_adapters.gguf)."""

from __future__ import annotations

from chatbot.registry import ModelEntry
from chatbot.settings import Settings
from model_adapters.cpu import serving_threads
from model_adapters.local_chat import LocalEngine


def set_torch_threads(n: int) -> None:
    """torch's intra-op threads are per process: the entry loaded last sets them."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class TransformersEngine(LocalEngine):
    name = "transformers"
    kinds = frozenset({"chat"})
    needs_path = True

    @classmethod
    def unavailable_reason(cls, entry: ModelEntry) -> str | None:
        from chatbot.quantize import is_gptq_checkpoint, missing_gptq_packages

        if entry.resolved_path and is_gptq_checkpoint(entry.resolved_path):
            missing = missing_gptq_packages()
            if missing:
                return f"GPTQ checkpoint needs {', '.join(missing)}: pip install '.[gptq]'"
        return None

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from chatbot.quantize import is_gptq_checkpoint
        from model_adapters.gguf import cache_root, converted, find_gguf
        from model_adapters.transformers.chunked import chunk_option
        from model_adapters.transformers.prefix_cache import PrefixCacheOptions
        from model_adapters.transformers.runtime import HFRuntime, pick_device

        super().__init__(entry, settings)
        opts = entry.options
        set_torch_threads(serving_threads(opts.threads, settings.threads))
        extra = dict(opts.model_extra or {})
        load_kwargs = dict(extra.get("load_kwargs") or {})
        path = entry.resolved_path or entry.path or ""
        gguf_file = find_gguf(entry.resolved_path)
        if gguf_file is not None:  # de-quantised once, then loaded from the cache
            path = converted(gguf_file, cache_root(settings), where=f"model {entry.name!r}")
        elif entry.resolved_path and is_gptq_checkpoint(entry.resolved_path):
            # gptqmodel picks its int4 kernel for the device at load time: load in place.
            load_kwargs.setdefault("device_map", pick_device(opts.device))
        self.runtime = HFRuntime(
            path,
            device=opts.device,
            dtype=opts.dtype,
            trust_remote_code=opts.trust_remote_code,
            max_model_len=opts.max_model_len,
            max_queue=entry.max_queue,
            max_batch_size=entry.max_batch_size,
            load_kwargs=load_kwargs,
            prefix_cache=PrefixCacheOptions.parse(extra.get("prefix_cache")),
            prefill_chunk=chunk_option(extra.get("prefill_chunk")),
        )
