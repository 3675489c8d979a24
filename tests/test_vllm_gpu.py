"""CUDA-only behaviour of the vLLM engine (the `vllm` CUDA package on a GPU machine):
GPU memory options pass through, GPTQ int4 through vLLM, tensor parallel on 2+ GPUs.
Skipped, with the reason, where there is no CUDA device or no CUDA vllm."""

from __future__ import annotations

import pytest

from model_adapters.vllm.engine import vllm_build

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: GPU-only vLLM tests did not run", allow_module_level=True)
if vllm_build() != "cuda":
    pytest.skip(
        "the CUDA vllm package is not installed (pip install '.[vllm]')", allow_module_level=True
    )

from chatbot import factory  # noqa: E402
from chatbot.quantize import quantize  # noqa: E402
from tests.extra_models import extra_models  # noqa: E402

BASE = {"defaults": {"temperature": 0, "max_tokens": 16}}
GPU_OPTS = {"max_model_len": 512, "gpu_memory_utilization": 0.2, "enforce_eager": True}


@pytest.fixture(scope="module")
def gpu_models(_registry, models_root):
    models = {
        "gpu-vllm": {
            **BASE,
            "path": "tiny-qwen2",
            "engines": ["vllm", "transformers"],
            "options": GPU_OPTS,
        },
    }
    with extra_models(models, models_root) as registry:
        yield registry


def test_vllm_is_picked_on_cuda_and_options_pass_through(gpu_models) -> None:
    engine = factory.get_engine("gpu-vllm")
    assert factory.picked["gpu-vllm"] == ("vllm", {})
    config = engine.runtime.engine.vllm_config
    assert config.cache_config.gpu_memory_utilization == 0.2
    assert engine.runtime.device == "cuda"
    out = engine.chat_model().invoke("hello")
    assert out.content and out.usage_metadata["output_tokens"] > 0
    total = torch.cuda.get_device_properties(0).total_memory
    assert engine.memory_bytes() == int(total * 0.2)
    factory.unload("gpu-vllm")


def test_gptq_int4_through_vllm(models_root) -> None:
    pytest.importorskip("gptqmodel", reason="gptqmodel not installed (pip install '.[gptq]')")
    quantize(models_root / "tiny-llama", models_root / "tiny-gptq-gpu", bits=4, group_size=128)
    models = {
        "gpu-gptq": {
            **BASE,
            "path": "tiny-gptq-gpu",
            "engines": ["vllm"],
            "options": {**GPU_OPTS, "quantization": "gptq", "dtype": "float16"},
        }
    }
    with extra_models(models, models_root):
        engine = factory.get_engine("gpu-gptq")
        assert "gptq" in str(engine.runtime.engine.vllm_config.model_config.quantization)
        assert engine.chat_model().invoke("hello").content


def test_gptq_int4_through_transformers_on_cuda(models_root) -> None:
    pytest.importorskip("gptqmodel", reason="gptqmodel not installed (pip install '.[gptq]')")
    path = models_root / "tiny-gptq-gpu"
    if not path.exists():
        quantize(models_root / "tiny-llama", path, bits=4, group_size=128)
    models = {
        "gpu-gptq-hf": {
            **BASE,
            "path": "tiny-gptq-gpu",
            "engines": ["transformers"],
            "options": {"device": "cuda"},
        }
    }
    with extra_models(models, models_root):
        engine = factory.get_engine("gpu-gptq-hf")
        assert next(engine.runtime.model.parameters()).device.type == "cuda"
        assert engine.chat_model().invoke("hello").content


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="tensor parallel needs 2+ GPUs")
def test_tensor_parallel(models_root) -> None:
    models = {
        "gpu-tp": {
            **BASE,
            "path": "tiny-qwen2",
            "engines": ["vllm"],
            "options": {**GPU_OPTS, "tensor_parallel_size": 2},
        }
    }
    with extra_models(models, models_root):
        engine = factory.get_engine("gpu-tp")
        assert engine.runtime.engine.vllm_config.parallel_config.tensor_parallel_size == 2
        assert engine.chat_model().invoke("hello").content


def test_ray_executor_on_a_local_ray_cluster(models_root) -> None:
    """`distributed_executor_backend: ray` (the multi-node path) against a Ray cluster this
    test starts; vLLM's engine process joins it through RAY_ADDRESS."""
    ray = pytest.importorskip("ray", reason="ray not installed (pip install '.[ray]')")
    import os

    context = ray.init(num_gpus=1, include_dashboard=False, log_to_driver=False)
    os.environ["RAY_ADDRESS"] = context.address_info["gcs_address"]
    models = {
        "gpu-ray": {
            **BASE,
            "path": "tiny-qwen2",
            "engines": ["vllm"],
            "options": {**GPU_OPTS, "distributed_executor_backend": "ray"},
        }
    }
    try:
        with extra_models(models, models_root):
            engine = factory.get_engine("gpu-ray")
            parallel = engine.runtime.engine.vllm_config.parallel_config
            assert parallel.distributed_executor_backend == "ray"
            assert engine.chat_model().invoke("hello").content
            assert ray.cluster_resources().get("GPU") == 1
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        ray.shutdown()
