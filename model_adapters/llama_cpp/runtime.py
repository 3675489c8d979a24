"""llama.cpp runtime: one GGUF model, many requests decoded together in one llama_batch.

All llama.cpp calls happen on one worker thread. Each running request owns a sequence id
in a unified KV cache (`kv_unified`: the sequences share its cells). Every step is one
`llama_decode` of a batch holding, for each decoding request, its pending token, plus as
much of the waiting prompts as fits in `n_batch` (chunked prefill: a long prompt joins
over several steps without stalling the running streams). Sampling happens here, on the
logits llama.cpp returns, with the same code as the transformers engine: greedy, top-p
with a per-request seed, and xgrammar masks for tools / json_schema
(model_adapters.constrained) over the GGUF's Hugging Face tokenizer, whose ids are the
GGUF's own.

A request is admitted only when the cache has room for its prompt plus its token budget
(max_tokens capped by the context window), so decoding never runs out of cells mid-way;
requests that do not fit yet wait in the queue.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from model_adapters.constrained import compile_constraint
from model_adapters.generation import (
    Delta,
    GenerationRequest,
    IncrementalDecoder,
    Sink,
    StopMatcher,
    sample_next,
)
from model_adapters.runtime import (
    EngineStats,
    QueuedWorker,
    check_context,
    final_delta,
    finish_after,
)

log = logging.getLogger(__name__)
_live: weakref.WeakSet[LlamaCppRuntime] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for runtime in list(_live):  # a worker inside llama_decode at exit aborts the process
        runtime.close()


@dataclass
class Seq:
    """One request: its sequence in the KV cache and its decoding state."""

    request: GenerationRequest
    sink: Sink
    seq_id: int
    budget: int  # tokens it may produce (max_tokens capped by the context window)
    stops: StopMatcher
    decoder: IncrementalDecoder
    todo: list[int]  # prompt tokens not yet in the cache
    constraint: Any = None
    generator: Any = None
    pos: int = 0  # tokens in the cache
    produced: int = 0
    next_token: int = -1  # sampled, not yet fed
    finish: str | None = None
    reserved: int = 0  # cache cells held for it


class LlamaCppRuntime(QueuedWorker):
    """GGUF weights + llama.cpp context + a worker thread batching all requests."""

    # Penalties, logit_bias, top_k, min_p and logprobs are not applied here: the HTTP
    # layer (chatbot.api.sampling) refuses them by name for this runtime.
    sampling_fields = False

    def __init__(
        self,
        gguf: Path,
        tokenizer: Any,
        threads: int,
        max_model_len: int | None = None,
        max_batch_size: int = 8,
        max_queue: int = 256,
        kv_tokens: int | None = None,
        n_batch: int = 512,
        flash_attn: bool | None = None,
    ) -> None:
        import llama_cpp as ll

        _quiet_llama_logs()
        self._ll = ll
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = ll.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self._model:
            raise ValueError(f"llama.cpp cannot load {gguf}")
        vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(vocab))
        train = int(ll.llama_model_n_ctx_train(self._model)) or 4096
        self.context_length = min(max_model_len or train, train)
        self.kv_tokens = max(kv_tokens or self.context_length, 1)
        self.context_length = min(self.context_length, self.kv_tokens)
        self.max_batch_size = max(1, min(max_batch_size, int(ll.llama_max_parallel_sequences())))
        self.n_batch = n_batch
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = self.kv_tokens
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = self.max_batch_size
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = True
        cparams.no_perf = True
        if flash_attn is not None:
            cparams.flash_attn_type = int(flash_attn)
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise ValueError(f"llama.cpp cannot create a context for {gguf}")
        self.kv_tokens = int(ll.llama_n_ctx(self._ctx))
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self.threads = threads
        self.device = "cpu"  # n_gpu_layers=0; the catalog's pool reads it
        self.tokenizer = tokenizer
        self.eos_ids = {i for i in range(self.n_vocab) if ll.llama_vocab_is_eog(vocab, i)}
        # What model_adapters.constrained and ChatLocal read from a model's config.
        self.model = SimpleNamespace(
            config=SimpleNamespace(vocab_size=self.n_vocab, eos_token_id=sorted(self.eos_ids))
        )
        self._size = int(ll.llama_model_size(self._model))
        self.stats = EngineStats()
        self._rows: list[Seq] = []
        self._free_ids = list(range(self.max_batch_size - 1, -1, -1))
        self._reserved = 0
        self._start_worker(max_queue, f"llama-{gguf.name}")  # it frees llama.cpp's objects
        _live.add(self)

    def memory_bytes(self) -> int:
        return self._size

    # --- requests --------------------------------------------------------------------

    def _budget(self, request: GenerationRequest) -> int:
        return min(request.max_tokens, self.context_length - len(request.prompt_ids))

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        n = len(request.prompt_ids)
        check_context(n, self.context_length)
        if n == 0:
            raise ValueError("prompt_ids: at least one token is required")
        self._enqueue(request, sink)

    # --- worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._free()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._rows):
                    self._cond.wait()
                if self._closed:
                    break
                admitted = self._take_admissible()
            for request, sink in admitted:
                self._start(request, sink)
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - the error goes back to the callers
                log.exception("llama.cpp step failed")
                self._fail_all(exc)
        closed = RuntimeError("the model runtime was closed")
        self._fail_all(closed)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for _, sink in waiting:
            sink.put(Delta(error=closed, finish_reason="error"))

    def _take_admissible(self) -> list[tuple[GenerationRequest, Sink]]:
        """Oldest waiting requests that have a free sequence and cache room (in order)."""
        taken: list[tuple[GenerationRequest, Sink]] = []
        free_ids, reserved = len(self._free_ids), self._reserved
        while self._waiting and free_ids > len(taken):
            request = self._waiting[0][0]
            need = len(request.prompt_ids) + max(self._budget(request), 0)
            if reserved + need > self.kv_tokens and (self._rows or taken):
                break  # wait for running requests to free cells
            reserved += need
            taken.append(self._waiting.popleft())
        return taken

    def _start(self, request: GenerationRequest, sink: Sink) -> None:
        import torch

        self.stats.requests += 1
        try:
            generator = None
            if request.seed is not None:
                generator = torch.Generator().manual_seed(request.seed)
            budget = self._budget(request)
            constraint = None
            if request.constraint is not None:  # the budget it must close within
                config = self.model.config
                constraint = compile_constraint(request.constraint, self.tokenizer, config, budget)
        except Exception as exc:  # noqa: BLE001 - e.g. a constraint that does not compile
            sink.put(Delta(error=exc, finish_reason="error"))
            return
        seq = Seq(
            request=request,
            sink=sink,
            seq_id=self._free_ids.pop(),
            budget=budget,
            stops=StopMatcher(request.stop),
            decoder=IncrementalDecoder(self.tokenizer),
            todo=list(request.prompt_ids),
            constraint=constraint,
            generator=generator,
            reserved=len(request.prompt_ids) + max(budget, 0),
        )
        self._reserved += seq.reserved
        if budget <= 0:
            seq.finish = "length"
        self._rows.append(seq)

    def _step(self) -> None:
        """One llama_decode: a token for each decoding row, then prompt chunks."""
        ll = self._ll
        for row in self._rows:
            if row.request.cancel.is_set() and row.finish is None:
                row.finish = "cancelled"
        self._retire()
        if not self._rows:
            return
        batch, n, outputs = self._batch, 0, []
        for row in self._rows:
            if not row.todo:
                _put(batch, n, row.next_token, row.pos, row.seq_id, True)
                n += 1
                row.pos += 1
                outputs.append(row)
        decoding = n
        for row in self._rows:
            room = self.n_batch - n
            if not row.todo or room <= 0:
                continue
            chunk, row.todo = row.todo[:room], row.todo[room:]
            for k, token in enumerate(chunk):
                _put(batch, n + k, token, row.pos + k, row.seq_id, False)
            n += len(chunk)
            row.pos += len(chunk)
            if not row.todo:
                batch.logits[n - 1] = 1
                outputs.append(row)
        batch.n_tokens = n
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        if decoding:
            self.stats.steps += 1
            self.stats.peak_batch = max(self.stats.peak_batch, decoding)
        if outputs:
            ptr = ll.llama_get_logits(self._ctx)
            logits = np.ctypeslib.as_array(ptr, shape=(len(outputs), self.n_vocab))
            self._advance(outputs, logits)
        self._retire()

    def _advance(self, rows: list[Seq], logits: np.ndarray) -> None:
        import torch

        greedy = logits.argmax(axis=1).tolist()
        for i, row in enumerate(rows):
            request = row.request
            try:
                if row.constraint is None and request.temperature <= 0:
                    token = greedy[i]
                else:
                    scores = torch.from_numpy(logits[i].copy())
                    if row.constraint is not None:
                        scores = row.constraint.mask(scores)
                    token = sample_next(scores, request.temperature, request.top_p, row.generator)
                self._emit(row, token)
            except Exception as exc:  # noqa: BLE001 - one bad row must not fail the batch
                log.exception("sampling failed")
                row.sink.put(Delta(error=exc, finish_reason="error"))
                row.finish = "error"

    def _emit(self, row: Seq, token: int) -> None:
        constraint = row.constraint
        if constraint is not None:  # may swap a token that leaves no room to close
            token = constraint.accept(token)
        row.produced += 1
        row.next_token = token
        self.stats.generated_tokens += 1
        if token in self.eos_ids:
            row.finish = "stop"
            return
        text, hit = row.stops.feed(row.decoder.add(token))
        if text:
            row.sink.put(Delta(text=text))
        if (finish := finish_after(row, hit)) is not None:
            row.finish = finish

    def _retire(self) -> None:
        """Send the last delta of finished rows, free their sequences and cache cells."""
        keep = []
        for row in self._rows:
            if row.finish is None:
                keep.append(row)
                continue
            self._release(row)
            if row.finish == "error":
                continue
            if row.finish == "cancelled":
                self.stats.cancelled += 1
            row.sink.put(final_delta(row))
        self._rows = keep

    def _release(self, row: Seq) -> None:
        self._ll.llama_memory_seq_rm(self._mem, row.seq_id, -1, -1)
        self._free_ids.append(row.seq_id)
        self._reserved -= row.reserved

    def _fail_all(self, exc: BaseException) -> None:
        for row in self._rows:
            if row.finish != "error":
                row.sink.put(Delta(error=exc, finish_reason="error"))
        self._rows = []
        self._free_ids = list(range(self.max_batch_size - 1, -1, -1))
        self._reserved = 0
        self._ll.llama_memory_clear(self._mem, True)

    def _free(self) -> None:
        ll = self._ll
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)


def _put(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits


def _quiet_llama_logs() -> None:
    # llama-cpp-python prints every llama.cpp log line unless its logger has a level.
    lib_log = logging.getLogger("llama-cpp-python")
    if lib_log.level == logging.NOTSET:
        lib_log.setLevel(logging.ERROR)
