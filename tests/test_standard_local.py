"""LangChain's standard suites for the local transformers chat model (tiny random model)."""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel

from tests.chat_local_suite import ChatLocalIntegrationTests, ChatLocalUnitTests

PARAMS = {"model": "tiny", "temperature": 0}


class TestLocalUnit(ChatLocalUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return PARAMS


class TestLocalIntegration(ChatLocalIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        # A forced tool call from random weights needs ~30 tokens (grammar-made).
        return {**PARAMS, "max_tokens": 48}

    # Random weights can be made to call a tool with valid arguments (grammar), but not to
    # pick the right argument value, copy text from the prompt, or decide on their own to
    # call a tool under tool_choice="auto". tests/test_tools_local.py covers what can pass.
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason="random weights: args are valid but not {'input': 3}")
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason="random weights: args are valid but not {'input': 3}")
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(reason="random weights do not choose to call a tool (tool_choice=auto)")
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="random weights cannot copy the Chinese name into the call")
    def test_unicode_tool_call_integration(self, model: BaseChatModel, **kwargs) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
