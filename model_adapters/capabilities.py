"""What a served model can do, for the /v1/models card and for clients that ask.

Local chat models share one implementation of tools and structured output (see
model_adapters.tools / constrained), so every local chat model gets them; the context
length comes from the loaded runtime when there is one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import BaseModel


class Capabilities(BaseModel):
    streaming: bool = False
    tools: bool = False
    tool_choice: bool = False
    json_schema: bool = False
    json_object: bool = False
    embeddings: bool = False
    vision: bool = False
    context_length: int | None = None
    tool_parser: str | None = None


def _grammar_available() -> bool:
    return importlib.util.find_spec("xgrammar") is not None


def model_capabilities(entry: Any, engine: Any = None) -> Capabilities:
    """Capabilities of a registry entry (`chatbot.registry.ModelEntry`).

    Pass the loaded engine when there is one: it gives the real context length and the
    tool parser detected from the chat template. Nothing is loaded here.
    """
    if entry.kind == "embeddings":
        return Capabilities(embeddings=True, context_length=_context_length(entry, engine))
    if not entry.is_local:  # online providers: tools and JSON schema are theirs
        return Capabilities(
            streaming=True, tools=True, tool_choice=True, json_schema=True, json_object=True
        )
    grammar = _grammar_available()
    return Capabilities(
        streaming=True,
        tools=True,
        tool_choice=grammar,
        json_schema=grammar,
        json_object=grammar,
        context_length=_context_length(entry, engine),
        tool_parser=_tool_parser(entry, engine),
    )


def _context_length(entry: Any, engine: Any) -> int | None:
    runtime = getattr(engine, "runtime", None)
    value = getattr(runtime, "context_length", None)
    if value is None:
        value = getattr(getattr(engine, "client", None), "max_seq_length", None)
    if value is None:
        value = getattr(entry.options, "max_model_len", None)
    return int(value) if value else None


def _tool_parser(entry: Any, engine: Any) -> str:
    if entry.tool_parser != "auto":
        return entry.tool_parser
    from model_adapters.tool_parsers import detect_parser_name

    tokenizer = getattr(getattr(engine, "runtime", None), "tokenizer", None)
    return detect_parser_name(getattr(tokenizer, "chat_template", None))
