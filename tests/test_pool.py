"""The model pool: a CPU budget that fits one tiny model, LRU eviction of idle models,
draining (never cutting off) requests in flight, and loading once under concurrency.

The tests run on a catalog of their own (two catalogs in one process share nothing), so
evicting and unloading here never touches the models other test modules hold."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.messages import HumanMessage

from chatbot.catalog import ModelCatalog
from chatbot.errors import PoolBusyError
from chatbot.registry import parse_registry
from chatbot.settings import get_settings
from model_adapters.generation import Sink
from model_adapters.runtime import weights_bytes

PAIR = ("pool-a", "pool-b")
# float32, as the weight files: the budget below is sized from the files (dtype auto could
# pick bfloat16, half the size, and then both would fit).
_GREEDY = {"lazy": True, "options": {"dtype": "float32"}}
_GREEDY["defaults"] = {"temperature": 0, "max_tokens": 8}
MODELS = {"pool-a": {"path": "tiny-qwen2", **_GREEDY}, "pool-b": {"path": "tiny-llama", **_GREEDY}}


@pytest.fixture(scope="module")
def catalog(models_root):
    registry = parse_registry({"models": MODELS}, models_root, source="<test>")
    catalog = ModelCatalog(registry, get_settings().model_copy())
    yield catalog
    catalog.close()


@pytest.fixture(autouse=True)
def _unloaded(catalog):
    yield
    catalog.close()  # each test starts with nothing loaded


@pytest.fixture
def one_model_budget(catalog, models_root, monkeypatch):
    """A CPU budget with room for one of the pair, not two."""
    size = max(weights_bytes(models_root / "tiny-qwen2"), weights_bytes(models_root / "tiny-llama"))
    monkeypatch.setattr(catalog.settings, "memory_budget_cpu", int(size * 1.5))
    monkeypatch.setattr(catalog.settings, "pool_wait_timeout", 30.0)
    return int(size * 1.5)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def resident_pair(catalog: ModelCatalog) -> set[str]:
    return {n for n in PAIR if n in catalog.pool.resident}


class BlockingSink(Sink):
    """Holds the runtime's worker at the first delta, so a request stays in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def put(self, delta) -> None:
        self.release.wait(30)
        super().put(delta)


def start_blocked_request(catalog: ModelCatalog, name: str) -> tuple[BlockingSink, object]:
    model = catalog.chat_model(name, temperature=0, max_tokens=8)
    request = model.request_for_prompt(model.prompt_ids([HumanMessage("hello")]), max_tokens=8)
    sink = BlockingSink()
    model.runtime.submit(request, sink)
    return sink, request


def test_alternating_requests_keep_one_resident(catalog, one_model_budget) -> None:
    a = catalog.chat_model("pool-a", temperature=0, max_tokens=8)
    b = catalog.chat_model("pool-b", temperature=0, max_tokens=8)
    loads = {n: catalog.pool.loads.get(n, 0) for n in PAIR}
    for _ in range(3):
        for model, name in ((a, "pool-a"), (b, "pool-b")):
            out = model.invoke("hello")
            assert out.content and out.response_metadata["finish_reason"] in ("stop", "length")
            assert resident_pair(catalog) == {name}
            assert catalog.pool.used("cpu") <= one_model_budget
    assert all(catalog.pool.loads[n] - loads[n] >= 2 for n in PAIR)  # evicted and reloaded


def test_concurrent_mixed_requests_all_answer(catalog, one_model_budget) -> None:
    def ask(i: int) -> str:
        name = PAIR[i % 2]
        return catalog.chat_model(name, temperature=0, max_tokens=8).invoke(f"hi {i}").content

    with ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(ask, range(8)))
    assert len(answers) == 8 and all(answers)
    assert len(resident_pair(catalog)) == 1 and catalog.pool.used("cpu") <= one_model_budget


def test_busy_model_is_not_evicted_until_it_drains(catalog, one_model_budget) -> None:
    catalog.unload("pool-b")
    sink, request = start_blocked_request(catalog, "pool-a")
    loader = threading.Thread(target=catalog.engine, args=("pool-b",))
    loader.start()
    assert wait_until(lambda: catalog.pool.state("pool-b") == "loading")
    time.sleep(0.3)
    assert loader.is_alive() and resident_pair(catalog) == {"pool-a"}  # waits: a is busy
    sink.release.set()
    deltas = list(sink.iter_sync(request.cancel))
    loader.join(30)
    assert not loader.is_alive() and resident_pair(catalog) == {"pool-b"}
    assert deltas[-1].finish_reason in ("stop", "length") and deltas[-1].error is None


def test_no_room_while_busy_times_out(catalog, one_model_budget, monkeypatch) -> None:
    catalog.unload("pool-b")
    monkeypatch.setattr(catalog.settings, "pool_wait_timeout", 0.3)
    sink, request = start_blocked_request(catalog, "pool-a")
    try:
        with pytest.raises(PoolBusyError, match="pool-a"):
            catalog.engine("pool-b")
    finally:
        sink.release.set()
        list(sink.iter_sync(request.cancel))
    assert "pool-b" not in catalog.loaded()


def test_concurrent_first_requests_load_once(catalog) -> None:
    catalog.unload("pool-a")
    before = catalog.pool.loads.get("pool-a", 0)
    barrier = threading.Barrier(4)

    def first_request(_: int) -> str:
        barrier.wait()
        return catalog.chat_model("pool-a").invoke("hello").content

    with ThreadPoolExecutor(4) as ex:
        answers = list(ex.map(first_request, range(4)))
    assert all(answers)
    assert catalog.pool.loads["pool-a"] == before + 1


def test_unload_while_streaming_waits_for_the_stream(catalog) -> None:
    sink, request = start_blocked_request(catalog, "pool-a")
    unloader = threading.Thread(target=catalog.unload, args=("pool-a",))
    unloader.start()
    assert wait_until(lambda: catalog.pool.state("pool-a") == "draining")
    time.sleep(0.3)
    assert unloader.is_alive() and catalog.pool.state("pool-a") == "draining"
    sink.release.set()
    deltas = list(sink.iter_sync(request.cancel))
    unloader.join(30)
    assert not unloader.is_alive() and catalog.pool.state("pool-a") == "unloaded"
    assert deltas[-1].finish_reason in ("stop", "length")  # finished, not cut off
    assert deltas[-1].completion_tokens > 0


def test_langchain_stream_survives_unload(catalog) -> None:
    model = catalog.chat_model("pool-a", temperature=0, max_tokens=64)
    stream = model.stream("hello")
    first = next(stream)
    unloader = threading.Thread(target=catalog.unload, args=("pool-a",))
    unloader.start()
    rest = list(stream)
    unloader.join(30)
    last = (rest or [first])[-1]
    assert last.response_metadata["finish_reason"] in ("stop", "length")
    # The same ChatLocal keeps working: the pool loads the model again.
    assert model.invoke("hello").content
    assert catalog.pool.state("pool-a") == "loaded"


def test_unloaded_weights_are_freed(catalog) -> None:
    import gc
    import weakref

    model = catalog.chat_model("pool-a", temperature=0, max_tokens=4)
    assert model.invoke("hello").content is not None
    weights = weakref.ref(catalog.engine("pool-a").runtime.model)
    catalog.unload("pool-a")
    for _ in range(50):  # the worker thread lets go of the model when it exits
        gc.collect()
        if weights() is None:
            break
        time.sleep(0.05)
    assert weights() is None, "the unloaded model is still referenced"
    assert model.invoke("hello").content is not None  # the kept ChatLocal still works
