"""Prefix caching in the transformers runtime: a prompt that starts like an earlier one
reuses that prefix's KV, and every request still gets exactly the greedy tokens it gets
without the cache (alone, batched with hits and misses together, joining a running batch,
next to cancelled requests).

Two runtimes on the same tiny model (float32) run side by side: one with the cache, one
without. Requests are put in one admission by holding the worker's queue lock while they
are submitted (the worker takes every waiting request at its next turn).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import DynamicCache

from model_adapters.generation import Delta, GenerationRequest, Sink
from model_adapters.transformers.prefix_cache import (
    PrefixCache,
    PrefixCacheOptions,
    prefill_inputs,
)
from model_adapters.transformers.runtime import HFRuntime

BLOCK = 4
TOKEN_BYTES = 2 * 2 * 2 * 3 * 4  # kv(): 2 layers x (keys, values) x 2 heads x 3 dims, float32


@pytest.fixture(scope="module")
def runtimes(models_root: Path) -> Iterator[tuple[HFRuntime, HFRuntime]]:
    path = models_root / "tiny-qwen2"
    kwargs: dict[str, Any] = {"device": "cpu", "dtype": "float32", "max_batch_size": 4}
    cold = HFRuntime(path, prefix_cache=None, **kwargs)
    warm = HFRuntime(path, prefix_cache=PrefixCacheOptions(block_size=BLOCK), **kwargs)
    yield cold, warm
    cold.close()
    warm.close()


@pytest.fixture(scope="module")
def system(runtimes: tuple[HFRuntime, HFRuntime]) -> list[int]:
    text = "you are a careful assistant. answer briefly and politely, in english. " * 3
    return runtimes[0].tokenizer.encode(text, add_special_tokens=False)


def user(runtime: HFRuntime, text: str) -> list[int]:
    return runtime.tokenizer.encode(text, add_special_tokens=False)


def request(prompt: list[int], max_tokens: int = 12, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt_ids=list(prompt), max_tokens=max_tokens, temperature=0, **kwargs
    )


def drain(req: GenerationRequest, sink: Sink) -> tuple[str, list[Delta]]:
    deltas = list(sink.iter_sync(req.cancel))
    assert not any(d.error for d in deltas), [d.error for d in deltas if d.error]
    return "".join(d.text for d in deltas), deltas


def together(runtime: HFRuntime, requests: list[GenerationRequest]) -> list[str]:
    """Submit all in one admission (the worker cannot take any before the lock is free)."""
    sinks = [Sink() for _ in requests]
    with runtime._cond:
        for req, sink in zip(requests, sinks, strict=True):
            runtime.submit(req, sink)
    return [drain(req, sink)[0] for req, sink in zip(requests, sinks, strict=True)]


def alone(runtime: HFRuntime, prompt: list[int], max_tokens: int = 12) -> str:
    return together(runtime, [request(prompt, max_tokens)])[0]


def test_alone_and_batched_match_without_cache(
    runtimes: tuple[HFRuntime, HFRuntime], system: list[int]
) -> None:
    cold, warm = runtimes
    prompts = [system + user(cold, q) for q in ("hi", "what is the weather in paris?", "one")]
    expected = [alone(cold, p) for p in prompts]
    assert len(set(expected)) > 1, "the prompts should give different outputs"
    before = warm.prefix_cache.stats.cached_tokens
    assert [alone(warm, p) for p in prompts] == expected
    # The 2nd and 3rd reused at least the system prompt's full blocks.
    reused = warm.prefix_cache.stats.cached_tokens - before
    assert reused >= 2 * (len(system) // BLOCK) * BLOCK
    # One admission mixing hits of different suffix lengths and a miss (a new prefix).
    other = user(cold, "a different start entirely, nothing shared. ") + user(cold, "hi")
    mixed = [prompts[2], prompts[0], other, prompts[1]]
    want = [expected[2], expected[0], alone(cold, other), expected[1]]
    assert together(warm, [request(p) for p in mixed]) == want
    assert together(cold, [request(p) for p in mixed]) == want


def test_joining_a_running_batch_matches(
    runtimes: tuple[HFRuntime, HFRuntime], system: list[int]
) -> None:
    cold, warm = runtimes
    long_prompt = system + user(cold, "tell me a long story")
    short = system + user(cold, "and a short one")
    want_long, want_short = alone(cold, long_prompt, 40), alone(cold, short)
    alone(warm, long_prompt, 2)  # the system prompt is cached from here on
    hits = warm.prefix_cache.stats.hits
    first, sink = request(long_prompt, 40), Sink()
    warm.submit(first, sink)
    deltas = sink.iter_sync(first.cancel)
    text = next(deltas).text  # the first row is running: the next one joins its batch
    assert alone(warm, short) == want_short
    text += "".join(d.text for d in deltas)
    assert text == want_long
    assert warm.prefix_cache.stats.hits == hits + 2


def test_cancelled_rows_do_not_disturb_hits(
    runtimes: tuple[HFRuntime, HFRuntime], system: list[int]
) -> None:
    cold, warm = runtimes
    prompts = [system + user(cold, q) for q in ("first question", "second question")]
    expected = [alone(cold, p, 20) for p in prompts]
    alone(warm, prompts[0], 1)
    early = request(system + user(cold, "cancelled while waiting"), 20)
    early.cancel.set()
    late = request(system + user(cold, "cancelled while running"), 500)
    reqs = [request(prompts[0], 20), early, late, request(prompts[1], 20)]
    sinks = [Sink() for _ in reqs]
    with warm._cond:
        for req, sink in zip(reqs, sinks, strict=True):
            warm.submit(req, sink)
    for got, delta in enumerate(sinks[2].iter_sync(late.cancel)):
        if got == 2:
            late.cancel.set()
        final = delta
    assert final.finish_reason == "cancelled"
    assert drain(early, sinks[1])[1][-1].finish_reason == "cancelled"
    assert [drain(reqs[i], sinks[i])[0] for i in (0, 3)] == expected
    assert [alone(warm, p, 20) for p in prompts] == expected  # the cache is still sound


def test_prompt_logprobs_are_never_served_from_the_cache(
    runtimes: tuple[HFRuntime, HFRuntime], system: list[int]
) -> None:
    cold, warm = runtimes
    prompt = system + user(cold, "echo me")
    alone(warm, prompt, 1)

    def echo(runtime: HFRuntime) -> list[Any]:
        req, sink = request(prompt, 2, prompt_logprobs=1), Sink()
        runtime.submit(req, sink)
        deltas = drain(req, sink)[1]
        return next(d.prompt_logprobs for d in deltas if d.prompt_logprobs)

    want, got = echo(cold), echo(warm)
    assert len(got) == len(prompt)
    assert [lp and lp.token_id for lp in got] == [lp and lp.token_id for lp in want]
    assert [lp and round(lp.logprob, 4) for lp in got] == [
        lp and round(lp.logprob, 4) for lp in want
    ]


def test_prefill_on_cached_prefixes_gives_the_same_logits(
    runtimes: tuple[HFRuntime, HFRuntime], system: list[int]
) -> None:
    """The core of it, on the model directly: rows with cached prefixes of different
    lengths and a row without one, in one forward, against each prompt prefilled whole."""
    model = runtimes[0].model
    prompts = [system + [11, 12, 13], system[:9] + [7] * 6, [5, 6, 7, 8, 9], system[:13]]
    cache = PrefixCache(block_size=BLOCK)

    def last_logits(prompt: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            inputs = prefill_inputs([prompt], [None], 0, "cpu", model.config)
            out = model(**inputs, use_cache=True)
        cache.store(prompt, inputs["past_key_values"], 0)
        return out.logits[0, -1]

    want = [last_logits(p) for p in prompts]
    hits = [cache.lookup(p) for p in prompts]
    assert [h and h.length for h in hits] == [(len(p) - 1) // BLOCK * BLOCK for p in prompts]
    hits[2] = None  # and one row that prefills all of its prompt
    with torch.inference_mode():
        inputs = prefill_inputs(prompts, hits, 0, "cpu", model.config)
        logits = model(**inputs, use_cache=True).logits[:, -1]
    for i in range(len(prompts)):
        torch.testing.assert_close(logits[i], want[i], atol=1e-4, rtol=1e-4)


def kv(tokens: int, layers: int = 2, value: float = 0.0) -> DynamicCache:
    """A one-row cache whose column t holds value + t (to check which columns are kept)."""
    cache = DynamicCache()
    col = torch.arange(tokens, dtype=torch.float32).view(1, 1, tokens, 1) + value
    for i in range(layers):
        cache.update(col.expand(1, 2, tokens, 3).clone(), col.expand(1, 2, tokens, 3) * -1, i)
    return cache


def test_lookup_is_block_aligned_and_leaves_a_token_to_prefill() -> None:
    cache = PrefixCache(block_size=4, max_bytes=64 * TOKEN_BYTES)
    ids = list(range(100, 110))  # 10 tokens: 2 full blocks
    cache.store(ids, kv(10), 0)
    assert len(cache) == 2
    hit = cache.lookup(ids + [1, 2])
    assert hit is not None and hit.length == 8
    assert hit.keys[0][0, :, 0].tolist() == list(range(8))  # the first 8 columns, in order
    assert hit.values[1][0, :, 0].tolist() == [-float(t) for t in range(8)]
    assert cache.lookup(ids[:8]).length == 4  # the 8th token must be prefilled: 1 block
    assert cache.lookup(ids[:4]) is None
    assert cache.lookup([100, 101, 102, 999, 104, 105, 106, 107, 1]) is None  # 1st block differs
    assert cache.lookup(ids[:4] + [0, 0, 0, 0, 1]).length == 4  # 2nd block differs


def test_left_padded_rows_store_their_own_columns() -> None:
    cache = PrefixCache(block_size=2, max_bytes=64 * TOKEN_BYTES)
    wide = kv(7)  # a row of 4 tokens, left-padded to 7: its tokens are columns 3..6
    cache.store([1, 2, 3, 4], wide, 0)
    assert cache.lookup([1, 2, 3, 4, 5]).keys[0][0, :, 0].tolist() == [3, 4, 5, 6]


def test_eviction_keeps_the_budget_and_drops_leaves_first() -> None:
    cache = PrefixCache(block_size=2, max_bytes=7 * TOKEN_BYTES)
    shared = [1, 2, 3, 4]
    cache.store(shared + [5, 6], kv(6), 0)
    assert (cache.tokens, cache.bytes) == (6, 6 * TOKEN_BYTES)
    cache.store(shared + [7, 8], kv(6, value=10), 0)  # one new block: the oldest leaf goes
    assert cache.tokens == 6
    assert cache.lookup(shared + [7, 8, 0]).length == 6
    assert cache.lookup(shared + [5, 6, 0]).length == 4  # the shared root survived
    cache.store(list(range(20, 40)), kv(20), 0)  # longer than the budget: first 3 blocks
    assert cache.tokens == 6
    assert cache.lookup(list(range(20, 40))).length == 6
    small = PrefixCache(block_size=4, max_bytes=3 * TOKEN_BYTES)  # under one block
    small.store(shared, kv(4), 0)
    assert len(small) == 0 and small.lookup(shared + [5]) is None


def test_options() -> None:
    assert PrefixCacheOptions.parse(None).enabled
    assert PrefixCacheOptions.parse(True).enabled
    assert not PrefixCacheOptions.parse(False).enabled
    opts = PrefixCacheOptions.parse({"block_size": 32, "max_mb": 64})
    assert (opts.enabled, opts.block_size, opts.max_mb) == (True, 32, 64)
    with pytest.raises(ValidationError, match="block_siz"):
        PrefixCacheOptions.parse({"block_siz": 32})
    with pytest.raises(ValidationError, match="block_size"):
        PrefixCacheOptions.parse({"block_size": 0})


def test_entry_option_reaches_the_runtime(models_root: Path) -> None:
    import chatbot

    entry = chatbot.get_registry().get("tiny")
    assert chatbot.get_chat_model("tiny").runtime.prefix_cache is not None  # default on
    off = entry.model_copy(
        update={"options": entry.options.model_copy(update={"prefix_cache": False})}
    )
    from chatbot.settings import get_settings
    from model_adapters.transformers.engine import TransformersEngine

    engine = TransformersEngine(off, get_settings())
    try:
        assert engine.runtime.prefix_cache is None
    finally:
        engine.runtime.close()
