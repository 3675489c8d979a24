"""The OpenAI-compatible API under /v1: chat completions (chat_routes), legacy
completions (completion_routes), and here /v1/models, /v1/models/{id}, /v1/embeddings.

Every chat model is driven through its LangChain interface (`astream`); the legacy
completions API drives local models from the raw prompt. Errors that happen before the
first token (unknown model, prompt too long, queue full, ...) are HTTP errors; later
ones end the stream with an error event (chatbot.api.sse).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from fastapi import APIRouter, Request

from chatbot.api.errors import APIError, bad_request
from chatbot.api.models import model_card, resolve_embeddings
from chatbot.api.openai import chat as chat_routes
from chatbot.api.openai import completions as completion_routes
from chatbot.api.openai.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
)
from chatbot.api.openai.serving import Deadline, app_state, outcome_of

router = APIRouter(prefix="/v1", tags=["openai"])
router.include_router(chat_routes.router)
router.include_router(completion_routes.router)


# --- /v1/models --------------------------------------------------------------------


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    state = app_state(request)
    cards = [model_card(state.catalog, e, state.created) for e in state.catalog.registry.served()]
    return {"object": "list", "data": cards}


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    state = app_state(request)
    entry = state.catalog.served_entry(model_id, None)
    return model_card(state.catalog, entry, state.created)


# --- /v1/embeddings ----------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not value:
        raise bad_request("'input' must not be empty.", param="input")
    if not all(isinstance(v, str) for v in value):
        raise bad_request(
            "'input' must be a string or an array of strings (token ids are not supported).",
            param="input",
        )
    for i, text in enumerate(value):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800"): not text
            raise bad_request(f"'input[{i}]' is not valid Unicode text: {exc}.", "input") from None
    return list(value)


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    state = app_state(request)
    texts = _texts(body.input)
    model = await resolve_embeddings(state.catalog, body.model)
    name = state.catalog.default_name(body.model, "embeddings")
    tracker = state.metrics.track(name, "embeddings")
    deadline = Deadline(state.settings.request_timeout)
    try:
        vectors = await deadline.run(model.aembed_documents(texts))
        count = getattr(model, "count_tokens", None)
        tokens = int(await asyncio.to_thread(count, texts)) if callable(count) else 0
    except BaseException as exc:
        tracker.finish(outcome_of(exc))
        raise
    tracker.tokens(tokens, 0)
    tracker.finish("ok")
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise APIError(
            400,
            f"Model {name!r} makes {len(vectors[0])}-dimensional embeddings; other "
            "'dimensions' are not supported.",
            param="dimensions",
        )
    as_base64 = body.encoding_format == "base64"
    data = [
        EmbeddingData(index=i, embedding=_base64(v) if as_base64 else list(v))
        for i, v in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingResponse(model=name, data=data, usage=usage)
