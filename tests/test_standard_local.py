"""LangChain's standard suites for the local transformers chat model (tiny random model)."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from model_adapters.local_chat import ChatLocal

PARAMS = {"model": "tiny", "temperature": 0}


class TestLocalUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLocal]:
        return ChatLocal

    @property
    def chat_model_params(self) -> dict:
        return PARAMS


class TestLocalIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLocal]:
        return ChatLocal

    @property
    def chat_model_params(self) -> dict:
        return {**PARAMS, "max_tokens": 16}

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False
