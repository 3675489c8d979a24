"""Sampling fields beyond temperature/top_p (penalties, logit_bias, top_k, min_p,
repetition_penalty, logprobs): which model honours which, as invoke kwargs.

Never dropped: a field the model cannot honour is a 400 naming it.
- local engines (ChatLocal): every field, per request (model_adapters.generation);
- OpenAI-compatible providers: OpenAI's own fields as they are, vLLM's extras
  (top_k, min_p, repetition_penalty) in the request body (`extra_body`);
- routers: OpenAI's own fields (their replicas take them either way).
"""

from __future__ import annotations

from typing import Any

from chatbot.api.errors import bad_request

OPENAI_FIELDS = ("presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs")
VLLM_FIELDS = ("top_k", "min_p", "repetition_penalty")


def _kind(model: Any) -> str:
    from langchain_core.runnables import RunnableBinding
    from langchain_openai.chat_models.base import BaseChatOpenAI

    from model_adapters.local_chat import ChatLocal
    from model_adapters.router.chat import ChatRouter

    while isinstance(model, RunnableBinding):
        model = model.bound
    if isinstance(model, ChatLocal):  # a runtime that cannot apply them says so
        return "local" if getattr(model.runtime, "sampling_fields", True) else "other"
    if isinstance(model, BaseChatOpenAI):
        return "openai"
    if isinstance(model, ChatRouter):
        return "router"
    return "other"


def sampling_kwargs(values: dict[str, Any], model: Any, name: str) -> dict[str, Any]:
    """The invoke kwargs for the sampling fields set in `values` (None/False: unset)."""
    given = {k: v for k, v in values.items() if v is not None and v is not False}
    if not given:
        return {}
    if given.get("top_logprobs") and not values.get("logprobs"):
        raise bad_request("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    kind = _kind(model)
    if kind == "local":
        return given
    allowed = OPENAI_FIELDS + (VLLM_FIELDS if kind == "openai" else ())
    if kind == "other":
        allowed = ()
    for field in given:
        if field not in allowed:
            raise bad_request(
                f"Model {name!r} does not support {field!r}.",
                param=field,
                code="unsupported_parameter",
            )
    out = {k: v for k, v in given.items() if k in OPENAI_FIELDS}
    extra = {k: v for k, v in given.items() if k in VLLM_FIELDS}
    if extra:
        bound = model
        while hasattr(bound, "bound"):
            bound = bound.bound
        out["extra_body"] = {**(getattr(bound, "extra_body", None) or {}), **extra}
    return out
