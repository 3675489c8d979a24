"""Sink: a reader that falls behind gets what piled up as one delta, nothing lost."""

from __future__ import annotations

import asyncio
import threading

from model_adapters.generation import Delta, Sink, TokenLogprob


def _piled_up() -> list[Delta]:
    return [
        Delta(prompt_logprobs=[None]),
        Delta(text="a", logprobs=[TokenLogprob(1, -0.1)]),
        Delta(text="b", logprobs=[TokenLogprob(2, -0.2)]),
        Delta(text="c"),
        Delta(finish_reason="stop", prompt_tokens=5, completion_tokens=3, stop_sequence="x"),
    ]


def _check(deltas: list[Delta]) -> None:
    # The prompt's logprobs stay on their own; the text and the final delta join.
    assert [d.prompt_logprobs for d in deltas] == [[None], None]
    last = deltas[1]
    assert last.text == "abc"
    assert [lp.token_id for lp in last.logprobs] == [1, 2]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("stop", 5, 3)
    assert last.stop_sequence == "x"


def test_sync_reader_behind_gets_merged_deltas() -> None:
    sink = Sink()
    for delta in _piled_up():
        sink.put(delta)
    _check(list(sink.iter_sync(threading.Event())))


def test_async_reader_behind_gets_merged_deltas() -> None:
    async def run() -> list[Delta]:
        sink = Sink(asyncio.get_running_loop())
        for delta in _piled_up():
            sink.put(delta)
        return [d async for d in sink.iter_async(threading.Event())]

    _check(asyncio.run(run()))


def test_errors_are_never_merged_away() -> None:
    sink = Sink()
    boom = RuntimeError("boom")
    sink.put(Delta(text="partial"))
    sink.put(Delta(error=boom, finish_reason="error"))
    deltas = list(sink.iter_sync(threading.Event()))
    assert [d.text for d in deltas] == ["partial", ""]
    assert deltas[1].error is boom


def test_reader_keeping_up_gets_every_delta_and_wakes_for_each() -> None:
    """One delta at a time, handed over by a gate: the reader waits, is woken, reads it."""
    sink = Sink()
    cancel = threading.Event()
    got: list[str] = []
    read = threading.Semaphore(0)

    def reader() -> None:
        for delta in sink.iter_sync(cancel):
            got.append(delta.text)
            read.release()

    thread = threading.Thread(target=reader)
    thread.start()
    for piece in "xyz":
        sink.put(Delta(text=piece))
        assert read.acquire(timeout=30)
    sink.put(Delta(finish_reason="length"))
    thread.join(timeout=30)
    assert got == ["x", "y", "z", ""]
    assert cancel.is_set()
