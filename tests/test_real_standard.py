"""LangChain's standard integration suite on the real model (SmolLM2-135M-Instruct, GGUF)
through ChatLocal and the transformers engine: the tests that xfail on random weights
(tests/test_standard_local.py) run for real here."""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel

from tests.chat_local_suite import ChatLocalIntegrationTests

pytestmark = pytest.mark.real_model

# Greedy. Constrained output (forced tool calls, JSON) needs room until the other
# helper's fix for short budgets lands (`]]]]` at max_tokens <= ~100).
PARAMS = {"model": "smol", "temperature": 0, "max_tokens": 200}


class TestSmolIntegration(ChatLocalIntegrationTests):
    @pytest.fixture(autouse=True)
    def _loaded(self, smol_engine) -> None:
        """Load the shared weights before the first test (not inside its timing)."""

    @property
    def chat_model_params(self) -> dict:
        return PARAMS

    # Shown here: with the tools in the system prompt (the GGUF template has none) and
    # tool_choice="auto", SmolLM2-135M answers in prose instead of calling get_weather
    # ("assert any(block['type'] == 'tool_call' ...)" fails). Forced calls work (above).
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason="SmolLM2-135M does not choose to call a tool on its own")
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
