"""LangChain's standard suites set up for ChatLocal, whatever engine runs it: what it
supports is declared once here. The test modules (test_standard_local, test_real_standard,
test_llama_cpp) give the params, and mark what their model cannot do."""

from __future__ import annotations

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from model_adapters.local_chat import ChatLocal


class ChatLocalUnitTests(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLocal]:
        return ChatLocal


class ChatLocalIntegrationTests(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLocal]:
        return ChatLocal

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
