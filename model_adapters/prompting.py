"""Chat template rendering for local models, with fallbacks for limited templates."""

from __future__ import annotations

from typing import Any

from model_adapters.generation import ContextLengthError
from model_adapters.messages import fold_system, fold_tools


def _apply(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(messages, **kwargs)


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    return "tools" in template


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None
) -> str:
    """Render messages with the model's own chat template.

    Templates that reject a system role get the system text folded into the first user
    turn; templates without tool support get tool turns as plain text (the tool list
    itself is put in the system prompt by the caller, see model_adapters.tools).
    """
    if not getattr(tokenizer, "chat_template", None):
        lines = [f"{m['role']}: {m['content']}" for m in fold_tools(messages)]
        return "\n".join([*lines, "assistant:"])
    if tools and not template_supports_tools(tokenizer):
        tools = None
    if not template_supports_tools(tokenizer):
        messages = fold_tools(messages)
    try:
        return _apply(tokenizer, messages, tools)
    except Exception as exc:  # jinja2 TemplateError from raise_exception in the template
        if not any(m["role"] == "system" for m in messages):
            raise ValueError(f"the model's chat template rejected the messages: {exc}") from exc
    try:
        return _apply(tokenizer, fold_system(messages), tools)
    except Exception as exc:
        raise ValueError(f"the model's chat template rejected the messages: {exc}") from exc


def max_token_chars(tokenizer: Any) -> int:
    """Longest vocabulary entry: no token covers more characters than this."""
    cached = getattr(tokenizer, "_chatbot_max_token_chars", None)
    if cached is None:
        cached = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
        tokenizer._chatbot_max_token_chars = cached
    return cached


def encode(tokenizer: Any, text: str, context_length: int | None = None) -> list[int]:
    """Token ids of a rendered prompt.

    With `context_length`, a text too long to fit even at the most characters a token can
    cover is rejected before tokenizing: a multi-megabyte prompt costs no CPU.
    """
    if context_length and len(text) > context_length * max_token_chars(tokenizer):
        raise ContextLengthError(
            f"prompt of {len(text)} characters cannot fit the model's context length of "
            f"{context_length} tokens"
        )
    # The template already wrote BOS and role markers; don't add them twice.
    try:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    except TypeError:
        # Lone surrogates ("\ud800" is valid JSON) make tokenizers raise TypeError; say
        # what is wrong with the text instead (UnicodeEncodeError, a ValueError: a 400).
        text.encode("utf-8")
        raise
