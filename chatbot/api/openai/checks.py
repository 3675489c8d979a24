"""Checks on OpenAI-format requests that run before any tokenizing or grammar work:
sampling fields vLLM knows but we do not serve (a 400, never dropped), schema sizes,
and text that no tokenizer takes (lone surrogates)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# vLLM's other sampling fields: known, not served. Unknown fields are ignored (as vLLM
# does); these would change the output, so asking for them is a 400, never dropped.
UNSUPPORTED_SAMPLING = (
    "min_tokens",
    "typical_p",
    "use_beam_search",
    "length_penalty",
    "ignore_eos",
    "stop_token_ids",
    "bad_words",
    "allowed_token_ids",
    "include_stop_str_in_output",
    "prompt_logprobs",
    "truncate_prompt_tokens",
)


def refuse_unsupported(body: BaseModel) -> None:
    from chatbot.api.errors import bad_request

    for name in UNSUPPORTED_SAMPLING:
        if (body.model_extra or {}).get(name) not in (None, False, [], 0):
            raise bad_request(
                f"{name!r} is not supported by this server.",
                param=name,
                code="unsupported_parameter",
            )


# --- cheap checks, before any tokenizing or grammar compilation -----------------------

# OpenAI's documented limit for structured outputs: 5000 object properties in all. A
# schema past it would spend seconds of CPU (prompt rendering, grammar compilation) only
# to be refused, so it is refused first. Nodes bound everything else (anyOf, items, ...).
MAX_SCHEMA_PROPERTIES = 5000
MAX_SCHEMA_NODES = 50_000


def schema_size_error(schemas: list[Any]) -> str | None:
    """Why these JSON schemas (together) are too large to serve, or None. Iterative: a
    deeply nested schema costs no recursion."""
    properties = nodes = 0
    stack = list(schemas)
    while stack:
        node = stack.pop()
        nodes += 1
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                properties += len(props)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        if properties > MAX_SCHEMA_PROPERTIES:
            return f"the schemas have more than {MAX_SCHEMA_PROPERTIES} properties in all"
        if nodes > MAX_SCHEMA_NODES:
            return f"the schemas have more than {MAX_SCHEMA_NODES} JSON values in all"
    return None


def check_text(value: str, what: str = "text") -> str:
    """A string that is valid Unicode text (JSON allows lone surrogates such as \\ud800,
    which no tokenizer or encoder takes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode text: {exc.reason}") from None
    return value


def check_stop(value: str | list[str] | None) -> str | list[str] | None:
    for stop in [value] if isinstance(value, str) else value or []:
        check_text(stop, "a stop string")
    return value
