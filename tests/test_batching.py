"""Continuous batching in the transformers runtime: concurrent requests share decode steps
but each gets exactly the tokens it would get alone.

Uses the registry entry `tiny-batched` (max_batch_size 4, max_queue 4) through the factory.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

import chatbot
from model_adapters.generation import (
    Constraint,
    GenerationRequest,
    QueueFullError,
    Sink,
    stream_async,
)

NAME = "tiny-batched"
# Different lengths so rows need different amounts of left padding.
PROMPTS = [
    "hi",
    "what is the weather in paris today?",
    "tell me about the city of london and its weather and people and school and food",
    "one two",
    "the " * 40 + "end",
    "hello, how are you?",
]


@pytest.fixture(scope="module")
def model() -> Any:
    return chatbot.get_chat_model(NAME)


@pytest.fixture(scope="module")
def runtime(model: Any) -> Any:
    return model.runtime


async def run(model: Any, prompt: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """Stream one request; return its text and the last chunk's metadata."""
    text, meta = "", {}
    async for chunk in model.astream(prompt, **kwargs):
        text += chunk.content
        meta = {**chunk.response_metadata, **(chunk.usage_metadata or {})} or meta
    return text, meta


async def alone(model: Any, prompts: list[str], **kwargs: Any) -> list[str]:
    """Each prompt run with nothing else in the engine (batch of one)."""
    return [(await run(model, p, **kwargs))[0] for p in prompts]


async def staggered(model: Any, prompts: list[str], **kwargs: Any) -> tuple[list[str], list[bool]]:
    """Start each request once the previous one is streaming, so each joins a running
    batch. Returns the texts and, per request, whether the first was still running then."""
    texts = [""] * len(prompts)
    first_running: list[bool] = []
    tasks: list[asyncio.Task] = []

    async def one(i: int, started: asyncio.Event) -> None:
        async for chunk in model.astream(prompts[i], **kwargs):
            texts[i] += chunk.content
            started.set()
        started.set()

    for i in range(len(prompts)):
        started = asyncio.Event()
        tasks.append(asyncio.create_task(one(i, started)))
        first_running.append(not tasks[0].done())
        await started.wait()
    await asyncio.gather(*tasks)
    return texts, first_running


async def test_concurrent_streams_match_greedy_alone(model: Any, runtime: Any) -> None:
    expected = await alone(model, PROMPTS, max_tokens=48)
    assert len(set(expected)) == len(expected), "prompts should give different outputs"
    steps = runtime.stats.steps
    texts, first_running = await staggered(model, PROMPTS, max_tokens=48)
    assert texts == expected
    # Requests really overlapped: later ones joined while the first was generating.
    assert sum(first_running[1:]) >= 2
    assert 2 <= runtime.stats.peak_batch <= 4  # never more rows than max_batch_size
    # Batched: far fewer decode steps than tokens generated.
    assert runtime.stats.steps - steps < sum(48 for _ in PROMPTS)


async def test_all_at_once_match_alone(model: Any) -> None:
    prompts = PROMPTS[:4]
    expected = await alone(model, prompts, max_tokens=24)
    results = await asyncio.gather(*(run(model, p, max_tokens=24) for p in prompts))
    assert [text for text, _ in results] == expected


async def test_stop_and_max_tokens_per_request(model: Any) -> None:
    long_texts = await alone(model, PROMPTS[:4], max_tokens=40)
    # A stop string taken from the middle of each request's own greedy output.
    stops = [t[10:14] for t in long_texts[:2]]
    assert all(stops)
    jobs = [
        run(model, PROMPTS[0], max_tokens=40, stop=[stops[0]]),
        run(model, PROMPTS[1], max_tokens=40, stop=[stops[1]]),
        run(model, PROMPTS[2], max_tokens=3),
        run(model, PROMPTS[3], max_tokens=7),
    ]
    results = await asyncio.gather(*jobs)
    for i in range(2):
        text, meta = results[i]
        assert text == long_texts[i][: long_texts[i].index(stops[i])]
        assert meta["finish_reason"] == "stop"
    want3 = (await alone(model, [PROMPTS[2]], max_tokens=3))[0]
    want7 = (await alone(model, [PROMPTS[3]], max_tokens=7))[0]
    for (text, meta), want, n in ((results[2], want3, 3), (results[3], want7, 7)):
        assert text == want
        assert meta["finish_reason"] == "length"
        assert meta["output_tokens"] == n


async def test_cancelling_one_does_not_disturb_others(model: Any, runtime: Any) -> None:
    expected = await alone(model, PROMPTS[:3], max_tokens=40)
    cancelled_before = runtime.stats.cancelled
    others = [asyncio.create_task(run(model, p, max_tokens=40)) for p in PROMPTS[:3]]

    request = model.request_for_prompt(
        model.prompt_ids([HumanMessage("cancel me")]), max_tokens=500
    )
    got, final = 0, None
    async for delta in stream_async(runtime.submit, request):
        got += 1
        if got == 3:
            request.cancel.set()  # what a client disconnect does
        final = delta
    assert final is not None and final.finish_reason == "cancelled"
    assert final.completion_tokens < 500
    assert [text for text, _ in await asyncio.gather(*others)] == expected
    assert runtime.stats.cancelled == cancelled_before + 1


async def test_breaking_out_of_a_stream_cancels_it(model: Any, runtime: Any) -> None:
    before = runtime.stats.cancelled
    async for _ in model.astream("stop early", max_tokens=500):
        break
    # The worker notices the cancel at its next step.
    for _ in range(200):
        if runtime.stats.cancelled > before:
            break
        await asyncio.sleep(0.01)
    assert runtime.stats.cancelled == before + 1


def test_queue_full_raises(model: Any, runtime: Any) -> None:
    prompt = model.prompt_ids([HumanMessage("fill the queue")])
    requests: list[GenerationRequest] = []
    sinks: list[Sink] = []
    with pytest.raises(QueueFullError):
        for _ in range(20):  # 4 waiting (+ up to 4 running) fit; more cannot
            request = GenerationRequest(prompt_ids=prompt, max_tokens=2000, temperature=0)
            sink = Sink()
            runtime.submit(request, sink)
            requests.append(request)
            sinks.append(sink)
    assert 4 <= len(requests) <= 8
    for request in requests:
        request.cancel.set()
    pairs = zip(requests, sinks, strict=True)
    finals = [list(sink.iter_sync(request.cancel))[-1] for request, sink in pairs]
    assert {d.finish_reason for d in finals} == {"cancelled"}


async def test_seeded_sampling_is_reproducible_in_a_batch(model: Any) -> None:
    params = {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_tokens": 24}
    first = (await run(model, PROMPTS[1], **params))[0]
    again = (await run(model, PROMPTS[1], **params))[0]
    other_seed = (await run(model, PROMPTS[1], **{**params, "seed": 99}))[0]
    batched = await asyncio.gather(
        run(model, PROMPTS[0], max_tokens=24),
        run(model, PROMPTS[1], **params),
        run(model, PROMPTS[2], temperature=1.0, max_tokens=24),
    )
    assert first == again == batched[1][0]
    assert other_seed != first


class ForcedTokens:
    """A per-request logits mask that allows only the next token of a fixed sequence
    (the same mask/accept/done API as model_adapters.constrained's matchers)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.pos = tokens, 0

    def mask(self, logits: Any) -> Any:
        forced = logits.clone().fill_(float("-inf"))
        forced[self.tokens[self.pos]] = 0.0
        return forced

    def accept(self, token: int) -> int:
        assert token == self.tokens[self.pos]
        self.pos += 1
        return token  # the token taken (a grammar matcher may swap it)

    def done(self) -> bool:
        return self.pos == len(self.tokens)


async def test_logits_mask_applies_to_its_row_only(
    model: Any, runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model_adapters.transformers.runtime as hf_engine

    monkeypatch.setattr(hf_engine, "make_constraint", lambda c, *_: c and ForcedTokens(c.spec))
    expected = await alone(model, PROMPTS[:2], max_tokens=30)
    target = "paris weather is sunny"
    tokens = runtime.tokenizer.encode(target, add_special_tokens=False)
    request = model.request_for_prompt(
        model.prompt_ids([HumanMessage("json please")]), max_tokens=30
    )
    request.constraint = Constraint(kind="test", spec=tokens)

    async def constrained() -> tuple[str, str | None]:
        text, reason = "", None
        async for delta in stream_async(runtime.submit, request):
            text, reason = text + delta.text, delta.finish_reason
        return text, reason

    results = await asyncio.gather(
        run(model, PROMPTS[0], max_tokens=30), constrained(), run(model, PROMPTS[1], max_tokens=30)
    )
    assert results[1] == (target, "stop")
    assert [results[0][0], results[2][0]] == expected


class BrokenMask(ForcedTokens):
    def mask(self, logits: Any) -> Any:
        raise ValueError("broken mask")


async def test_a_failing_request_does_not_fail_the_batch(
    model: Any, runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model_adapters.transformers.runtime as hf_engine

    monkeypatch.setattr(hf_engine, "make_constraint", lambda c, *_: c and BrokenMask([]))
    expected = await alone(model, PROMPTS[:2], max_tokens=30)
    request = model.request_for_prompt(model.prompt_ids([HumanMessage("break")]), max_tokens=30)
    request.constraint = Constraint(kind="test")

    async def broken() -> BaseException | None:
        try:
            async for _ in stream_async(runtime.submit, request):
                pass
        except ValueError as exc:
            return exc
        return None

    results = await asyncio.gather(
        run(model, PROMPTS[0], max_tokens=30), broken(), run(model, PROMPTS[1], max_tokens=30)
    )
    assert str(results[1]) == "broken mask"
    assert [results[0][0], results[2][0]] == expected
    assert (await run(model, PROMPTS[0], max_tokens=30))[0] == expected[0]  # worker still alive
