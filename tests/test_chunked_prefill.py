"""Chunked prefill in the transformers runtime: a long prompt is prefilled a chunk per
worker turn while the running batch keeps decoding, and every request still gets exactly
the greedy tokens it gets without chunking.

Counts, not clocks: "the running stream is not stalled" is checked as decode steps taken
between a long prompt's arrival and its first token (one per chunk).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_adapters.generation import GenerationRequest, Sink
from model_adapters.transformers.chunked import DEFAULT_PREFILL_CHUNK, ChunkedPrefill, chunk_option
from model_adapters.transformers.prefix_cache import PrefixCacheOptions
from model_adapters.transformers.runtime import HFRuntime

CHUNK = 16


@pytest.fixture(scope="module")
def runtimes(models_root: Path) -> Iterator[tuple[HFRuntime, HFRuntime]]:
    path = models_root / "tiny-qwen2"
    kwargs: dict[str, Any] = {"device": "cpu", "dtype": "float32", "max_batch_size": 4}
    plain = HFRuntime(path, **kwargs)
    chunked = HFRuntime(
        path, prefill_chunk=CHUNK, prefix_cache=PrefixCacheOptions(block_size=8), **kwargs
    )
    yield plain, chunked
    plain.close()
    chunked.close()


def ids(runtime: HFRuntime, text: str) -> list[int]:
    return runtime.tokenizer.encode(text, add_special_tokens=False)


def long_prompt(runtime: HFRuntime, tag: str, tokens: int = 10 * CHUNK + 5) -> list[int]:
    words = ids(
        runtime, f"{tag}: the quick brown fox jumps over the lazy dog again and again. " * 40
    )
    return words[:tokens]


def submit(runtime: HFRuntime, prompt: list[int], max_tokens: int) -> tuple[Any, Sink]:
    request = GenerationRequest(prompt_ids=prompt, max_tokens=max_tokens, temperature=0)
    sink = Sink()
    runtime.submit(request, sink)
    return request, sink


def text_of(request: GenerationRequest, sink: Sink) -> str:
    deltas = list(sink.iter_sync(request.cancel))
    assert not any(d.error for d in deltas), [d.error for d in deltas if d.error]
    return "".join(d.text for d in deltas)


def alone(runtime: HFRuntime, prompt: list[int], max_tokens: int = 12) -> str:
    return text_of(*submit(runtime, prompt, max_tokens))


def test_long_prompt_matches_unchunked(runtimes: tuple[HFRuntime, HFRuntime]) -> None:
    plain, chunked = runtimes
    prompt = long_prompt(plain, "one")
    before = chunked._chunked.chunks
    assert alone(chunked, prompt) == alone(plain, prompt)
    assert chunked._chunked.chunks - before == len(prompt) // CHUNK  # all but the last chunk
    # Again: its first blocks now come from the prefix cache, the rest is still chunked.
    longer = prompt + ids(plain, " and then some more words to make it longer still") * 3
    assert alone(chunked, longer) == alone(plain, longer)
    assert chunked.prefix_cache.stats.hits >= 1


def test_running_stream_keeps_decoding_while_a_long_prompt_joins(
    runtimes: tuple[HFRuntime, HFRuntime],
) -> None:
    plain, chunked = runtimes
    short, prompt = ids(plain, "hello there, how are you?"), long_prompt(plain, "two")
    want_short, want_long = alone(plain, short, 200), alone(plain, prompt)
    first, first_sink = submit(chunked, short, 200)
    stream = first_sink.iter_sync(first.cancel)
    got = next(stream).text  # the short request is decoding
    steps = chunked.stats.steps
    second, second_sink = submit(chunked, prompt, 12)
    deltas = second_sink.iter_sync(second.cancel)
    head = next(deltas)
    # One decode step of the running row per chunk before the long prompt's first token.
    assert chunked.stats.steps - steps >= len(prompt) // CHUNK
    assert head.text + "".join(d.text for d in deltas) == want_long
    assert got + "".join(d.text for d in stream) == want_short


def test_cancelled_while_chunking(
    runtimes: tuple[HFRuntime, HFRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, chunked = runtimes
    other = ids(plain, "what is the weather in paris today?")
    want = alone(plain, other, 30)
    one_chunk, go = threading.Event(), threading.Event()
    real = ChunkedPrefill.advance

    def gated(self: ChunkedPrefill) -> Any:
        out = real(self)
        one_chunk.set()
        go.wait(timeout=60)
        return out

    monkeypatch.setattr(ChunkedPrefill, "advance", gated)
    cancelled_before = chunked.stats.cancelled
    victim, victim_sink = submit(chunked, long_prompt(plain, "three"), 30)
    assert one_chunk.wait(timeout=60)  # the worker is in the middle of its chunks
    victim.cancel.set()
    go.set()
    deltas = list(victim_sink.iter_sync(victim.cancel))
    assert [d.finish_reason for d in deltas] == ["cancelled"]
    assert deltas[-1].completion_tokens == 0
    assert chunked.stats.cancelled == cancelled_before + 1
    assert not chunked._chunked.pending
    monkeypatch.setattr(ChunkedPrefill, "advance", real)
    assert alone(chunked, other, 30) == want  # the worker goes on as before


def test_prompt_logprobs_are_not_chunked(runtimes: tuple[HFRuntime, HFRuntime]) -> None:
    plain, chunked = runtimes
    prompt = long_prompt(plain, "four")

    def echo(runtime: HFRuntime) -> list[Any]:
        request = GenerationRequest(
            prompt_ids=prompt, max_tokens=1, temperature=0, prompt_logprobs=0
        )
        sink = Sink()
        runtime.submit(request, sink)
        return next(d.prompt_logprobs for d in sink.iter_sync(request.cancel) if d.prompt_logprobs)

    before = chunked._chunked.chunks
    got, want = echo(chunked), echo(plain)
    assert len(got) == len(prompt)
    assert [lp and lp.token_id for lp in got] == [lp and lp.token_id for lp in want]
    assert chunked._chunked.chunks == before


def test_option() -> None:
    assert chunk_option(64) == 64
    assert chunk_option(None) == DEFAULT_PREFILL_CHUNK  # on unless turned off
    assert chunk_option(0) is None and chunk_option(False) is None
    for bad in (True, 8, "512", 1.5):
        with pytest.raises(ValueError, match="prefill_chunk"):
            chunk_option(bad)
