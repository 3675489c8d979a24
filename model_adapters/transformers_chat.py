"""`engine: transformers` - local Hugging Face models (CPU, CUDA, MPS; GPTQ checkpoints too)."""

from __future__ import annotations

from typing import Any

from chatbot.engines import Engine
from chatbot.registry import ModelEntry
from chatbot.settings import Settings
from model_adapters.local_chat import ChatLocal


class TransformersEngine(Engine):
    name = "transformers"
    kinds = frozenset({"chat"})
    needs_path = True

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from model_adapters.hf_engine import HFRuntime

        super().__init__(entry, settings)
        opts = entry.options
        extra = dict(opts.model_extra or {})
        self.runtime = HFRuntime(
            entry.resolved_path or entry.path or "",
            device=opts.device,
            dtype=opts.dtype,
            trust_remote_code=opts.trust_remote_code,
            max_model_len=opts.max_model_len,
            max_queue=entry.max_queue,
            max_batch_size=entry.max_batch_size,
            load_kwargs=extra.get("load_kwargs"),
        )

    def chat_model(self, **overrides: Any) -> ChatLocal:
        defaults = self.entry.defaults.model_dump(exclude_none=True)
        if not defaults.get("stop"):
            defaults.pop("stop", None)
        params = {**defaults, "tool_parser": self.entry.tool_parser, **overrides}
        return ChatLocal(model=self.entry.name, runtime=self.runtime, **params)

    def memory_bytes(self) -> int:
        return self.runtime.memory_bytes()

    def close(self) -> None:
        self.runtime.close()
