"""The runtime contract: what a local engine (transformers, vLLM) hands to `ChatLocal`
and to the catalog's pool. One place for it, for the stats every runtime keeps and for
the context-length check they all apply before queueing a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from chatbot.errors import ContextLengthError

if TYPE_CHECKING:
    from model_adapters.generation import GenerationRequest, Sink


@dataclass
class EngineStats:
    requests: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    steps: int = 0  # decode steps (one forward pass for the whole batch each)
    peak_batch: int = 0  # the most requests decoded together in one step


@runtime_checkable
class Runtime(Protocol):
    """Loaded weights behind a request queue. `submit` never blocks on generation: it
    queues the request (or raises ContextLengthError / QueueFullError at once) and the
    runtime reports deltas to `sink` from its own thread or loop."""

    tokenizer: Any
    context_length: int
    stats: EngineStats

    def submit(self, request: GenerationRequest, sink: Sink) -> None: ...

    def memory_bytes(self) -> int: ...

    def close(self) -> None: ...


def check_context(prompt_len: int, context_length: int) -> None:
    """Refuse a prompt that leaves no room for one generated token."""
    if prompt_len >= context_length:
        raise ContextLengthError(
            f"prompt has {prompt_len} tokens but the model's context length is {context_length}"
        )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def weights_bytes(path: Path | None) -> int:
    """Size of the weight files of a local checkpoint (an estimate before loading)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))
