"""A chat model's context window and token counter, for trimming history and context."""

from __future__ import annotations

from collections.abc import Callable

from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately

TokenCounter = Callable[[list[BaseMessage]], int]
DEFAULT_CONTEXT = 4096


def context_window(model: BaseChatModel) -> int | None:
    """Input + output tokens the model accepts, if it says (local runtime or model profile)."""
    runtime = getattr(model, "runtime", None)
    if runtime is not None and getattr(runtime, "context_length", None):
        return int(runtime.context_length)
    profile = getattr(model, "profile", None) or {}
    limit = profile.get("max_input_tokens") if isinstance(profile, dict) else None
    return int(limit) if limit else None


def output_reserve(model: BaseChatModel) -> int:
    """Tokens to keep free for the answer."""
    value = getattr(model, "max_tokens", None) or getattr(model, "max_completion_tokens", None)
    return int(value) if isinstance(value, int) and value > 0 else 512


def token_counter(model: BaseChatModel) -> TokenCounter:
    """The model's own count where it has one that works offline, else an approximation.

    Local models count with their chat template (exact); LangChain's default counter would
    download a GPT-2 tokenizer, so providers without their own use the approximate count.
    """
    prompt_ids = getattr(model, "prompt_ids", None)
    if callable(prompt_ids):
        return lambda messages: len(prompt_ids(list(messages)))
    own = type(model).get_num_tokens_from_messages
    if own is not BaseLanguageModel.get_num_tokens_from_messages and own is not getattr(
        BaseChatModel, "get_num_tokens_from_messages", None
    ):

        def count(messages: list[BaseMessage]) -> int:
            try:
                return model.get_num_tokens_from_messages(list(messages))
            except Exception:  # e.g. tiktoken cannot fetch its tables offline
                return count_tokens_approximately(messages)

        return count
    return count_tokens_approximately
