"""ModelCatalog: each catalog (and each app built on one) owns its model state."""

from __future__ import annotations

import httpx
import pytest

from chatbot.api import create_app
from chatbot.catalog import ModelCatalog
from chatbot.errors import ModelNotFoundError
from chatbot.settings import Settings


@pytest.fixture
def catalogs(_registry):
    a, b = ModelCatalog(_registry), ModelCatalog(_registry)
    yield a, b
    a.close()
    b.close()


def test_two_catalogs_share_no_state(catalogs) -> None:
    a, b = catalogs
    reply = a.chat_model("tiny", temperature=0, max_tokens=3).invoke("hi")
    assert reply.usage_metadata["output_tokens"] >= 1
    assert "tiny" in a.loaded() and "tiny" not in b.loaded()
    assert "tiny" in a.pool.resident and "tiny" not in b.pool.resident
    assert a.picked["tiny"][0] == "transformers" and "tiny" not in b.picked
    assert b.unload("tiny") is False and "tiny" in a.loaded()


async def test_each_catalog_prepares_in_its_own_pool(catalogs) -> None:
    # The preparation pool (templates, tokenizing, grammars off the event loop) is the
    # catalog's, handed to each ChatLocal it builds, not a module global.
    from chatbot import factory
    from model_adapters.local_chat import ChatLocal

    a, b = catalogs
    assert a.prepare is not b.prepare
    model = a.chat_model("tiny", temperature=0, max_tokens=2)
    assert model.preparer is a.prepare
    threads: list[str] = []
    original = a.prepare.run

    async def spy(fn, *args):  # the real pool runs it; we only note the thread name
        import threading

        def traced(*inner):
            threads.append(threading.current_thread().name)
            return fn(*inner)

        return await original(traced, *args)

    a.prepare.run = spy  # type: ignore[method-assign]
    reply = await model.ainvoke("hi")
    assert reply.usage_metadata["output_tokens"] >= 1
    assert threads and all(name.startswith("prepare") for name in threads)
    assert ChatLocal(model="tiny").preparer is factory.default_catalog().prepare


def test_pool_wraps_the_runtime_without_touching_the_engine(catalogs) -> None:
    a, _ = catalogs
    engine = a.engine("tiny")
    model = a.chat_model("tiny")
    assert model.runtime is a.runtime("tiny")  # the pool's counting wrapper
    assert model.runtime is not engine.runtime  # the engine keeps its own
    assert model.runtime._real is engine.runtime


async def test_two_apps_in_one_process_serve_from_their_own_catalogs(catalogs) -> None:
    a, b = catalogs
    a.engine("tiny")  # loaded in a only
    settings = Settings(api_keys=[], cors_origins=[])
    cards = {}
    for name, catalog in (("a", a), ("b", b)):
        app = create_app(settings, show_progress=False, catalog=catalog)
        assert app.state.chatbot.catalog is catalog
        transport = httpx.ASGITransport(app=app)  # no lifespan: nothing loads at start
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            r = await http.get("/v1/models/tiny")
            assert r.status_code == 200, r.text
            cards[name] = r.json()
    assert cards["a"]["loaded"] is True and cards["b"]["loaded"] is False


def test_unknown_or_unserved_names_are_a_domain_error(catalogs) -> None:
    a, _ = catalogs
    with pytest.raises(ModelNotFoundError):
        a.served_entry("nope")
    with pytest.raises(ModelNotFoundError):
        a.served_entry("minilm", "chat")  # an embeddings entry asked for as chat
    assert a.served_entry(None).name == a.registry.default_model


def test_n_choices_run_concurrently_streamed_or_not(_registry) -> None:
    """No step runs until all n choices share one batch: were they served one after
    another (as streams once were), this would never finish."""
    import json

    from chatbot import factory
    from tests.gates import StepGate
    from tests.server_utils import start_server

    runtime = factory.get_engine("tiny").runtime
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "n": 3,
        "temperature": 0,
    }
    app = create_app(Settings(api_keys=[], cors_origins=[]), show_progress=False)
    texts = {}
    with start_server(app) as url:
        for stream in (False, True):
            with StepGate(runtime, rows=3, hold=False) as gate:
                r = httpx.post(
                    f"{url}/v1/chat/completions", json={**body, "stream": stream}, timeout=120
                )
            assert r.status_code == 200 and gate.full.is_set()
            if stream:
                parts: dict[int, str] = {}
                for block in r.text.strip().split("\n\n")[:-1]:
                    for choice in json.loads(block.removeprefix("data: "))["choices"]:
                        parts[choice["index"]] = parts.get(choice["index"], "") + (
                            choice["delta"].get("content") or ""
                        )
                texts[stream] = parts
            else:
                texts[stream] = {c["index"]: c["message"]["content"] for c in r.json()["choices"]}
    assert sorted(texts[True]) == sorted(texts[False]) == [0, 1, 2]
    assert texts[True] == texts[False]  # greedy: the same choices either way


def test_embeddings_follow_the_entry_dtype(catalogs) -> None:
    # `dtype: auto` as for chat models (bf16 where the CPU has it natively); an explicit
    # dtype is kept, and both embed to nearly the same vectors.
    import numpy as np

    from model_adapters.transformers.runtime import pick_dtype

    a, _ = catalogs
    engine = a.engine("minilm", "embeddings")
    assert engine.dtype == pick_dtype("auto", "cpu")
    assert next(engine.model.parameters()).dtype == engine.dtype
    entry = engine.entry.model_copy(
        update={"options": engine.entry.options.model_copy(update={"dtype": "float32"})}
    )
    exact = type(engine)(entry, a.settings)
    assert str(next(exact.model.parameters()).dtype) == "torch.float32"
    texts = ["the river by the old library", "a quiet northern harbour in winter"]
    ours = np.array(engine.embeddings().embed_documents(texts))
    ref = np.array(exact.embeddings().embed_documents(texts))
    assert (ours * ref).sum(axis=1).min() > 0.99


def test_embeddings_on_parallel_workers_match_one_encode(catalogs) -> None:
    # `threads: 2` on CPU: a call's batches run on two single-threaded workers. The
    # vectors match sentence-transformers' own encode, in the callers' order, and the
    # caller's torch thread count is left alone (OpenMP's count is per thread).
    import numpy as np
    import torch

    a, _ = catalogs
    engine = a.engine("minilm", "embeddings")
    opts = engine.entry.options.model_copy(update={"threads": 2, "batch_size": 3})
    parallel = type(engine)(engine.entry.model_copy(update={"options": opts}), a.settings)
    try:
        before = torch.get_num_threads()
        texts = [f"{word} " * n for n, word in enumerate(["river", "library", "harbour"] * 4, 1)]
        ours = np.array(parallel.embeddings().embed_documents(texts))
        assert parallel.embeddings()._pool is not None  # the workers ran, not encode()
        ref = parallel.model.encode(texts).astype(np.float32)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        assert ours.shape == (len(texts), ref.shape[1])
        assert (ours * ref).sum(axis=1).min() > 0.999
        assert torch.get_num_threads() == before
    finally:
        parallel.close()
