"""Hugging Face transformers runtime: loads weights once, generates for many requests at once.

All model work happens on one worker thread, so the event loop never blocks and the model
is never used from two threads at once. Requests wait in a bounded queue and join the
running batch between decode steps (continuous batching): new requests are prefilled
together with left padding, then merged into the batch's KV cache; finished or cancelled
requests leave the batch at the next step. Each row keeps its own stop strings, sampling
parameters, seed and constraint (see model_adapters.transformers.batch for the cache layout).
A prompt that starts like an earlier one is prefilled on top of that prefix's cached KV
(prefix_cache.py); one longer than `prefill_chunk` is prefilled a chunk per turn while the
batch keeps decoding (chunked.py).

Why not transformers' own continuous batching (`generate_batch` / ContinuousBatchingManager):
in transformers 5.19 it has per-request temperature/top-p but no per-request seed or
arbitrary per-request logits mask (structured output), and it needs paged attention.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_adapters.generation import (
    Delta,
    GenerationRequest,
    IncrementalDecoder,
    Sink,
    StopMatcher,
    is_greedy,
    process_logits,
    sample_next,
    token_logprob,
)
from model_adapters.runtime import (
    EngineStats,
    QueuedWorker,
    check_context,
    final_delta,
    finish_after,
)
from model_adapters.transformers.batch import prompt_logprobs, take_logprobs
from model_adapters.transformers.devices import pick_device, pick_dtype

if TYPE_CHECKING:
    from model_adapters.transformers.prefix_cache import PrefixCacheOptions

__all__ = ["EngineStats", "HFRuntime", "pick_device", "pick_dtype"]

log = logging.getLogger(__name__)
_live: weakref.WeakSet[HFRuntime] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A daemon worker still inside torch when the interpreter finalizes aborts the process
    # ("terminate called without an active exception"): stop the workers before that.
    for runtime in list(_live):
        runtime.close()


class HFRuntime(QueuedWorker):
    """Model + tokenizer + a worker thread that batches generation requests."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        max_queue: int = 256,
        max_batch_size: int = 8,
        load_kwargs: dict[str, Any] | None = None,
        prefix_cache: PrefixCacheOptions | None = None,  # None: off
        prefill_chunk: int | None = None,  # prompts longer than this are prefilled in chunks
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from model_adapters.transformers.batch import Batch, supports_merging
        from model_adapters.transformers.chunked import ChunkedPrefill
        from model_adapters.transformers.prefix_cache import PrefixCache

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
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self.max_batch_size = max_batch_size
        if max_batch_size > 1 and not supports_merging(config):
            log.warning("%s: sliding-window/linear cache: serving requests one at a time", path)
            self.max_batch_size = 1
        self.prefix_cache = None  # only plain full-attention caches can be assembled
        if prefix_cache is not None and prefix_cache.enabled and supports_merging(config):
            self.prefix_cache = PrefixCache(
                prefix_cache.block_size, int(prefix_cache.max_mb * 2**20)
            )
        params = inspect.signature(self.model.forward).parameters
        self._logits_to_keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._chunked = None  # chunks are assembled like cached prefixes: same limits
        if prefill_chunk and supports_merging(config):
            self._chunked = ChunkedPrefill(
                prefill_chunk, self.model, self.pad_id, self.device, self._logits_to_keep
            )
        self.stats = EngineStats()
        self._batch = Batch(self.device)
        self._start_worker(max_queue, f"hf-{Path(path).name}")
        _live.add(self)

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
        check_context(prompt_len, self.context_length)

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        self.check_fits(len(request.prompt_ids), request.max_tokens)
        self._enqueue(request, sink)

    # --- worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                chunking = self._chunked.pending if self._chunked is not None else ()
                while not (self._closed or self._waiting or self._batch.rows or chunking):
                    self._cond.wait()
                if self._closed:
                    break
                free = self.max_batch_size - len(self._batch) - len(chunking)
                admitted = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            try:
                with torch.inference_mode():
                    if admitted:
                        self._admit(admitted)
                    if chunking:
                        self._chunk()
                    if self._batch.rows:
                        self._step()
            except Exception as exc:  # noqa: BLE001 - the error goes back to the callers
                log.exception("generation step failed")
                self._fail(self._batch.rows, exc)
                self._batch.keep([])  # the worker lives on for the next requests
        closed = RuntimeError("the model runtime was closed")
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        self._fail(self._batch.rows, closed)
        self._fail([item.row for item in chunking], closed)
        for _, sink in waiting:
            sink.put(Delta(error=closed, finish_reason="error"))

    def _new_row(self, request: GenerationRequest, sink: Sink) -> Any:
        import torch

        from model_adapters.transformers.batch import Row

        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        # Never run past the context window, whatever max_tokens asked for.
        budget = min(request.max_tokens, self.context_length - len(request.prompt_ids))
        return Row(
            request=request,
            sink=sink,
            budget=budget,
            stops=StopMatcher(request.stop),
            decoder=IncrementalDecoder(self.tokenizer),
            constraint=make_constraint(
                request.constraint, self.tokenizer, self.model.config, budget
            ),
            generator=generator,
            length=len(request.prompt_ids),
        )

    def _admit(self, items: list[tuple[GenerationRequest, Sink]]) -> None:
        """Prefill new requests together (left-padded), sample their first token, merge."""
        from model_adapters.transformers.batch import Batch

        rows = []
        for request, sink in items:
            self.stats.requests += 1
            try:
                rows.append(self._new_row(request, sink))
            except Exception as exc:  # noqa: BLE001 - e.g. a constraint that doesn't compile
                sink.put(Delta(error=exc, finish_reason="error"))
        for row in rows:  # cancelled while waiting, or nothing to generate
            if row.request.cancel.is_set():
                row.finish = "cancelled"
            elif row.budget <= 0:
                row.finish = "length"
        fresh = Batch(self.device)
        fresh.rows = rows
        self._retire(fresh)
        if self.prefix_cache is None:
            groups = [(fresh.rows, [None] * len(fresh.rows))] if fresh.rows else []
        else:
            from model_adapters.transformers.prefix_cache import split_by_hits

            groups = split_by_hits(self.prefix_cache, fresh.rows)
        for group, hits in groups:
            now = []
            for row, hit in zip(group, hits, strict=True):
                if self._chunked is not None and self._chunked.wants(row, hit):
                    self._chunked.add(row, hit)  # a chunk per turn, from _chunk
                else:
                    now.append((row, hit))
            if now:
                self._prefill([r for r, _ in now], [h for _, h in now])

    def _chunk(self) -> None:
        """One chunk of the first long prompt waiting for its prefill."""
        from model_adapters.transformers.batch import Batch

        head = self._chunked.pending[0].row
        if head.request.cancel.is_set():
            self._chunked.pending.popleft()
            head.finish = "cancelled"
            gone = Batch(self.device)
            gone.rows = [head]
            self._retire(gone)
            return
        try:
            ready = self._chunked.advance()
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail only this request
            log.exception("chunked prefill failed")
            self._chunked.pending.popleft()
            self._fail([head], exc)
            return
        if ready is not None:
            self._prefill([ready.row], [ready.hit])

    def _prefill(self, rows: list[Any], hits: list[Any]) -> None:
        """One prefill forward for `rows` (on top of their cached prefixes, `hits`)."""
        from model_adapters.transformers.batch import Batch
        from model_adapters.transformers.prefix_cache import prefill_inputs

        fresh = Batch(self.device)
        fresh.rows = rows
        try:
            prompts = [r.request.prompt_ids for r in rows]
            inputs = prefill_inputs(prompts, hits, self.pad_id, self.device, self.model.config)
            fresh.cache = inputs["past_key_values"]
            echo = [r for r in rows if r.request.prompt_logprobs is not None]
            out = self.model(
                **inputs,
                use_cache=True,
                **({} if echo else self._logits_to_keep),  # echo: every position's logits
            )
            width = inputs["input_ids"].shape[1]
            for i, row in enumerate(rows):
                if self.prefix_cache is not None:
                    self.prefix_cache.store(prompts[i], fresh.cache, i)
                if row.request.prompt_logprobs is not None:  # never a hit: all of it was fed
                    logits = out.logits[i, width - len(prompts[i]) : width - 1]
                    lps = prompt_logprobs(logits, prompts[i], row.request.prompt_logprobs)
                    row.sink.put(Delta(prompt_logprobs=lps))
            self._advance(fresh.rows, out.logits[:, -1])
            self._retire(fresh)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail only the new requests
            log.exception("prefill failed")
            self._fail(fresh.rows, exc)
            return
        try:
            self._batch.merge(fresh.rows, fresh.cache)
        except Exception:
            self._fail(fresh.rows, RuntimeError("could not add the request to the batch"))
            raise  # the batch's cache may be half-merged: _run fails the running rows too

    def _step(self) -> None:
        """One decode step for every running row; finished/cancelled rows leave after it."""
        batch = self._batch
        for row in batch.rows:
            if row.request.cancel.is_set():
                row.finish = "cancelled"
        self._retire(batch)
        if not batch.rows:
            return
        self.stats.steps += 1
        self.stats.peak_batch = max(self.stats.peak_batch, len(batch))
        out = self.model(**batch.step_inputs(), use_cache=True)
        for row in batch.rows:
            row.length += 1
        self._advance(batch.rows, out.logits[:, -1])
        self._retire(batch)

    def _advance(self, rows: list[Any], logits: Any) -> None:
        """Pick each row's next token from its logits row and stream the text it adds."""
        greedy = logits.argmax(dim=-1).tolist()  # one call for every greedy row
        for i, row in enumerate(rows):
            request = row.request
            try:
                if row.constraint is None and is_greedy(request.temperature) and request.plain():
                    token = greedy[i]
                else:
                    scores = logits[i]
                    if not request.plain():
                        scores = process_logits(scores, request, row.output_ids, request.prompt_ids)
                    if row.constraint is not None:
                        scores = row.constraint.mask(scores)
                    token = sample_next(
                        scores,
                        request.temperature,
                        request.top_p,
                        row.generator,
                        request.top_k,
                        request.min_p,
                    )
                if request.logprobs is not None:
                    row.logprobs.append(token_logprob(logits[i], token, request.logprobs))
                self._emit(row, token)
            except Exception as exc:  # noqa: BLE001 - one bad row must not fail the batch
                log.exception("sampling failed")
                row.sink.put(Delta(error=exc, finish_reason="error"))
                row.finish = "error"

    def _emit(self, row: Any, token: int) -> None:
        constraint = row.constraint
        if constraint is not None:  # may swap a token that leaves no room to close
            token = constraint.accept(token)
        row.produced += 1
        row.next_token = token
        row.output_ids.append(token)
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            if row.logprobs:  # EOS is no text: its logprob is not reported (as vLLM)
                row.logprobs.pop()
            row.finish = "stop"
            return
        text, hit = row.stops.feed(row.decoder.add(token))
        if text:
            row.sink.put(Delta(text=text, logprobs=take_logprobs(row)))
        if (finish := finish_after(row, hit)) is not None:
            row.finish = finish

    def _retire(self, batch: Any) -> None:
        """Send the last delta of every finished row and drop those rows from the batch."""
        keep = []
        for i, row in enumerate(batch.rows):
            if row.finish is None:
                keep.append(i)
                continue
            if row.finish == "error":
                continue
            if row.finish == "cancelled":
                self.stats.cancelled += 1
            stop = row.stops.matched if row.finish == "stop_string" else None
            row.sink.put(final_delta(row, logprobs=take_logprobs(row), stop_sequence=stop))
        batch.keep(keep)

    def _fail(self, rows: list[Any], exc: BaseException) -> None:
        for row in rows:
            row.sink.put(Delta(error=exc, finish_reason="error"))


def make_constraint(constraint: Any, tokenizer: Any, config: Any, budget: int | None = None) -> Any:
    """Compile a Constraint into a token mask (see model_adapters.constrained)."""
    if constraint is None:
        return None
    from model_adapters.constrained import compile_constraint

    return compile_constraint(constraint, tokenizer, config, budget)
