"""The HTTP server: OpenAI-compatible /v1 API, LangServe routes and operations routes.

`create_app` loads on first use, so importing a pure module of this package (e.g.
chatbot.api.openai.convert) does not build the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatbot.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from chatbot.api.app import create_app

        return create_app
    raise AttributeError(f"module 'chatbot.api' has no attribute {name!r}")
