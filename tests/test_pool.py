"""The model pool: a CPU budget that fits one tiny model, LRU eviction of idle models,
draining (never cutting off) requests in flight, and loading once under concurrency."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.messages import HumanMessage

from chatbot import factory
from chatbot.errors import PoolBusyError
from chatbot.factory import default_catalog
from chatbot.settings import get_settings
from model_adapters.generation import Sink
from model_adapters.local_chat import ChatLocal
from model_adapters.runtime import weights_bytes
from tests.extra_models import extra_models

pool = default_catalog().pool

PAIR = ("pool-a", "pool-b")
MODELS = {
    "pool-a": {"path": "tiny-qwen2", "lazy": True, "defaults": {"temperature": 0, "max_tokens": 8}},
    "pool-b": {"path": "tiny-llama", "lazy": True, "defaults": {"temperature": 0, "max_tokens": 8}},
}


@pytest.fixture(scope="module")
def pool_registry(_registry, models_root):
    with extra_models(MODELS, models_root) as registry:
        yield registry


@pytest.fixture
def one_model_budget(pool_registry, models_root, monkeypatch):
    """A CPU budget with room for one of the pair, not two; other models unloaded first
    (an idle model is fair game for eviction) and reloaded afterwards."""
    before = [n for n in factory.loaded() if n not in PAIR]
    for name in before:
        factory.unload(name)
    size = max(weights_bytes(models_root / "tiny-qwen2"), weights_bytes(models_root / "tiny-llama"))
    settings = get_settings()
    monkeypatch.setattr(settings, "memory_budget_cpu", int(size * 1.5))
    monkeypatch.setattr(settings, "pool_wait_timeout", 30.0)
    yield int(size * 1.5)
    for name in PAIR:
        factory.unload(name)
    monkeypatch.undo()
    for name in before:
        entry = factory.get_registry().entries[name]
        factory.get_engine(name, entry.kind)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def resident_pair() -> set[str]:
    return {n for n in PAIR if n in pool.resident}


class BlockingSink(Sink):
    """Holds the runtime's worker at the first delta, so a request stays in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def put(self, delta) -> None:
        self.release.wait(30)
        super().put(delta)


def start_blocked_request(name: str) -> tuple[BlockingSink, object]:
    model = ChatLocal(model=name, temperature=0, max_tokens=8)
    request = model.request_for_prompt(model.prompt_ids([HumanMessage("hello")]), max_tokens=8)
    sink = BlockingSink()
    model.runtime.submit(request, sink)
    return sink, request


def test_alternating_requests_keep_one_resident(one_model_budget) -> None:
    a = ChatLocal(model="pool-a", temperature=0, max_tokens=8)
    b = ChatLocal(model="pool-b", temperature=0, max_tokens=8)
    loads = {n: pool.loads.get(n, 0) for n in PAIR}
    for _ in range(3):
        for model, name in ((a, "pool-a"), (b, "pool-b")):
            out = model.invoke("hello")
            assert out.content and out.response_metadata["finish_reason"] in ("stop", "length")
            assert resident_pair() == {name}
            assert pool.used("cpu") <= one_model_budget
    assert all(pool.loads[n] - loads[n] >= 2 for n in PAIR)  # evicted and reloaded


def test_concurrent_mixed_requests_all_answer(one_model_budget) -> None:
    def ask(i: int) -> str:
        name = PAIR[i % 2]
        return ChatLocal(model=name, temperature=0, max_tokens=8).invoke(f"hi {i}").content

    with ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(ask, range(8)))
    assert len(answers) == 8 and all(answers)
    assert len(resident_pair()) == 1 and pool.used("cpu") <= one_model_budget


def test_busy_model_is_not_evicted_until_it_drains(one_model_budget) -> None:
    factory.unload("pool-b")
    sink, request = start_blocked_request("pool-a")
    loader = threading.Thread(target=factory.get_engine, args=("pool-b",))
    loader.start()
    assert wait_until(lambda: pool.state("pool-b") == "loading")
    time.sleep(0.3)
    assert loader.is_alive() and resident_pair() == {"pool-a"}  # waits: a is busy
    sink.release.set()
    deltas = list(sink.iter_sync(request.cancel))
    loader.join(30)
    assert not loader.is_alive() and resident_pair() == {"pool-b"}
    assert deltas[-1].finish_reason in ("stop", "length") and deltas[-1].error is None


def test_no_room_while_busy_times_out(one_model_budget, monkeypatch) -> None:
    factory.unload("pool-b")
    monkeypatch.setattr(get_settings(), "pool_wait_timeout", 0.3)
    sink, request = start_blocked_request("pool-a")
    try:
        with pytest.raises(PoolBusyError, match="pool-a"):
            factory.get_engine("pool-b")
    finally:
        sink.release.set()
        list(sink.iter_sync(request.cancel))
    assert "pool-b" not in factory.loaded()


def test_concurrent_first_requests_load_once(pool_registry) -> None:
    factory.unload("pool-a")
    before = pool.loads.get("pool-a", 0)
    barrier = threading.Barrier(4)

    def first_request(_: int) -> str:
        barrier.wait()
        return factory.get_chat_model("pool-a").invoke("hello").content

    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(first_request, range(4)))
    assert all(answers)
    assert pool.loads["pool-a"] == before + 1


def test_unload_while_streaming_waits_for_the_stream(pool_registry) -> None:
    sink, request = start_blocked_request("pool-a")
    unloader = threading.Thread(target=factory.unload, args=("pool-a",))
    unloader.start()
    assert wait_until(lambda: pool.state("pool-a") == "draining")
    time.sleep(0.3)
    assert unloader.is_alive() and pool.state("pool-a") == "draining"
    sink.release.set()
    deltas = list(sink.iter_sync(request.cancel))
    unloader.join(30)
    assert not unloader.is_alive() and pool.state("pool-a") == "unloaded"
    assert deltas[-1].finish_reason in ("stop", "length")  # finished, not cut off
    assert deltas[-1].completion_tokens > 0


def test_langchain_stream_survives_unload(pool_registry) -> None:
    model = ChatLocal(model="pool-a", temperature=0, max_tokens=64)
    stream = model.stream("hello")
    first = next(stream)
    unloader = threading.Thread(target=factory.unload, args=("pool-a",))
    unloader.start()
    rest = list(stream)
    unloader.join(30)
    last = (rest or [first])[-1]
    assert last.response_metadata["finish_reason"] in ("stop", "length")
    # The same ChatLocal keeps working: the pool loads the model again.
    assert model.invoke("hello").content
    assert pool.state("pool-a") == "loaded"


def test_unloaded_weights_are_freed(pool_registry) -> None:
    import gc
    import weakref

    model = ChatLocal(model="pool-a", temperature=0, max_tokens=4)
    assert model.invoke("hello").content is not None
    weights = weakref.ref(factory.get_engine("pool-a").runtime.model)
    factory.unload("pool-a")
    for _ in range(50):  # the worker thread lets go of the model when it exits
        gc.collect()
        if weights() is None:
            break
        time.sleep(0.05)
    assert weights() is None, "the unloaded model is still referenced"
    assert model.invoke("hello").content is not None  # the kept ChatLocal still works
