"""LangChain's standard suites for the custom-provider base class (`ChatCustom`), using
the shipped example provider against a real OpenAI-compatible upstream on 127.0.0.1."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from model_adapters.custom_provider import ChatCustom
from tests.upstreams import Upstream

_upstream = Upstream("std")


@pytest.fixture(scope="module", autouse=True)
def _serve():
    with _upstream:
        yield


def _params() -> dict:
    return {
        "provider": "model_adapters.examples.http_provider:HTTPChatProvider",
        "model": "std-model",
        "base_url": _upstream.url,
    }


class TestCustomProviderUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatCustom]:
        return ChatCustom

    @property
    def chat_model_params(self) -> dict:
        return _params()


class TestCustomProviderIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatCustom]:
        return ChatCustom

    @property
    def chat_model_params(self) -> dict:
        return _params()

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "other-model"

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False
