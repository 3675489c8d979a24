"""The HTTP server: OpenAI-compatible /v1 API, LangServe routes and operations routes."""

from chatbot.api.app import create_app

__all__ = ["create_app"]
