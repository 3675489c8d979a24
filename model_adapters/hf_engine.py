"""Hugging Face transformers runtime: loads weights once, generates on one worker thread.

All model work happens on the worker thread, so the event loop never blocks and the
model is never used from two threads at once. Requests wait in a bounded queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_adapters.generation import (
    ContextLengthError,
    Delta,
    GenerationRequest,
    IncrementalDecoder,
    QueueFullError,
    Sink,
    StopMatcher,
    sample_next,
)

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    requests: int = 0
    cancelled: int = 0
    generated_tokens: int = 0


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class HFRuntime:
    """Model + tokenizer + a worker thread that runs generation requests."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        max_queue: int = 256,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=pick_dtype(dtype, self.device),
            trust_remote_code=trust_remote_code,
            **(load_kwargs or {}),
        )
        if not (load_kwargs or {}).get("device_map"):
            self.model.to(self.device)
        self.model.eval()
        config = self.model.config
        self.context_length = int(
            max_model_len
            or getattr(config, "max_position_embeddings", None)
            or self.tokenizer.model_max_length
        )
        self.eos_ids = self._eos_ids()
        self.stats = EngineStats()
        self.max_queue = max_queue
        self._queue: queue.Queue[tuple[GenerationRequest, Sink] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name=f"hf-{Path(path).name}", daemon=True)
        self._worker.start()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(value)
        return ids

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    # --- requests --------------------------------------------------------------------

    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        if prompt_len >= self.context_length:
            raise ContextLengthError(
                f"prompt has {prompt_len} tokens but the model's context length is "
                f"{self.context_length}"
            )

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        self.check_fits(len(request.prompt_ids), request.max_tokens)
        if self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"request queue is full ({self.max_queue} waiting)")
        self._queue.put((request, sink))

    def close(self) -> None:
        self._queue.put(None)

    # --- worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            request, sink = item
            self.stats.requests += 1
            try:
                self._generate(request, sink)
            except Exception as exc:  # noqa: BLE001 - the error goes back to the caller
                log.exception("generation failed")
                sink.put(Delta(error=exc, finish_reason="error"))

    def _generate(self, request: GenerationRequest, sink: Sink) -> None:
        import torch
        from transformers import DynamicCache

        prompt_len = len(request.prompt_ids)
        # Never run past the context window, whatever max_tokens asked for.
        budget = min(request.max_tokens, self.context_length - prompt_len)
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        stops = StopMatcher(request.stop)
        decoder = IncrementalDecoder(self.tokenizer)
        constraint = make_constraint(request.constraint, self.tokenizer, self.model.config)
        cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([request.prompt_ids], device=self.device)
        produced = 0
        finish = "length"
        with torch.inference_mode():
            while produced < budget:
                if request.cancel.is_set():
                    finish = "cancelled"
                    self.stats.cancelled += 1
                    break
                out = self.model(input_ids=inputs, past_key_values=cache, use_cache=True)
                logits = out.logits[0, -1]
                if constraint is not None:
                    logits = constraint.mask(logits)
                token = sample_next(logits, request.temperature, request.top_p, generator)
                produced += 1
                self.stats.generated_tokens += 1
                if constraint is not None:
                    constraint.accept(token)
                if token in self.eos_ids or (constraint is not None and constraint.done()):
                    if token not in self.eos_ids:
                        text, hit = stops.feed(decoder.add(token))
                        sink.put(Delta(text=text))
                    finish = "stop"
                    break
                text, hit = stops.feed(decoder.add(token))
                if text:
                    sink.put(Delta(text=text))
                if hit:
                    finish = "stop"
                    break
                inputs = torch.tensor([[token]], device=self.device)
        tail = stops.flush() if finish != "stop" else ""
        sink.put(
            Delta(
                text=tail,
                finish_reason=finish,
                prompt_tokens=prompt_len,
                completion_tokens=produced,
            )
        )


def make_constraint(constraint: Any, tokenizer: Any, config: Any) -> Any:
    """Compile a Constraint into a token mask (see model_adapters.constrained)."""
    if constraint is None:
        return None
    from model_adapters.constrained import compile_constraint

    return compile_constraint(constraint, tokenizer, config)
