"""LangServe routes. The only module that imports langserve (it is archived upstream:
swapping it out touches this file alone).

Each served chat model is at `/models/{name}` (invoke, batch, stream, stream_log,
stream_events, playground). Chains are mounted with `add_runnable_routes(app,
"/chains/{name}", runnable)`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable
from pydantic import RootModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.serving import chain_runnables
from chatbot.api.errors import APIError, from_exception, log_error
from chatbot.api.models import ChatInput, chat_runnable
from chatbot.catalog import ModelCatalog
from chatbot.settings import Settings


def add_runnable_routes(app: FastAPI, path: str, runnable: Runnable, **kwargs: Any) -> None:
    """Serve `runnable` at `path` the LangServe way (RemoteRunnable talks to it)."""
    from langserve import add_routes

    kwargs.setdefault("enable_feedback_endpoint", False)
    kwargs.setdefault("per_req_config_modifier", check_request)
    add_routes(app, runnable, path=path, **kwargs)


async def check_request(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """What LangServe lets through but must be a 4xx before any work (or stream) starts;
    LangServe calls this for every request, before it runs the runnable."""
    try:
        body = await request.json()  # Starlette caches it: LangServe reads the same one
    except ValueError:
        return config  # LangServe answers invalid JSON itself
    if not isinstance(body, dict):
        return config
    path = request.url.path
    if path.endswith("/batch") and "inputs" in body and not isinstance(body["inputs"], list):
        raise APIError(422, "'inputs' must be a list of inputs, one per run.", param="inputs")
    if path.endswith("/stream_events") and body.get("version", "v2") != "v2":
        raise APIError(422, "Only version 'v2' of stream_events is served here.", param="version")
    for key in ("input", "inputs"):
        where = _not_text(body.get(key))
        if where is not None:
            message = f"'{key}' holds a string that is not valid Unicode text{where}."
            raise APIError(400, message, param=key)
    return config


def _not_text(value: Any) -> str | None:
    """Where in `value` (JSON) a string is not valid Unicode text, or None. Iterative."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f" (a lone surrogate): {item[:40]!r}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def add_model_routes(app: FastAPI, catalog: ModelCatalog) -> list[str]:
    """`/models/{name}` for each served chat model, with LangServe's chat playground
    (messages in, the streamed message out); returns the paths added."""
    paths = []
    for entry in catalog.registry.served("chat"):
        path = f"/models/{entry.name}"
        add_runnable_routes(
            app,
            path,
            chat_playground_types(chat_runnable(catalog, entry.name)),
            playground_type="chat",
        )
        paths.append(path)
    return paths


def chat_playground_types(runnable: Runnable) -> Runnable:
    """The same runnable and validation, with JSON schemas the chat playground accepts:
    it wants an input with a `messages` array property (its requests are `{"messages":
    [...]}`, which validates as a chat prompt value) and an output `anyOf` naming the
    "ai" type. Both are true of the schemas already, only spelled differently."""

    class ChatModelInput(RootModel[ChatInput]):  # type: ignore[valid-type]
        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            schema = super().model_json_schema(*args, **kwargs)
            prompt = schema.get("$defs", {}).get("ChatPromptValueConcrete", {})
            messages = prompt.get("properties", {}).get("messages", {"type": "array"})
            # Applies to the object form only (JSON Schema), so it restricts nothing.
            schema["properties"] = {"messages": messages}
            return schema

    class ChatModelOutput(RootModel[AIMessage]):
        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            schema = super().model_json_schema(*args, **kwargs)
            defs = schema.pop("$defs", {})
            ref = schema.get("$ref", "").rpartition("/")[2]
            message = dict(defs.get(ref, schema))  # the playground reads it inline
            kind = dict(message.get("properties", {}).get("type", {}))
            if "const" in kind:
                kind["enum"] = [kind["const"]]
                message["properties"] = {**message["properties"], "type": kind}
            return {"anyOf": [message], "$defs": defs, "title": message.get("title", "Output")}

    return runnable.with_types(input_type=ChatModelInput, output_type=ChatModelOutput)


def add_chain_routes(
    app: FastAPI, catalog: ModelCatalog, settings: Settings | None = None
) -> list[str]:
    """`/chains/{rag,conversation,agent}` (chains.serving) over the KBs and histories of
    `settings` (the app's); returns the paths added."""
    paths = []
    for name, runnable in chain_runnables(catalog, settings).items():
        add_runnable_routes(app, f"/chains/{name}", runnable)
        paths.append(f"/chains/{name}")
    return paths


_STREAM_ENDPOINTS = ("/stream", "/stream_log", "/stream_events")


class StreamErrorEvents:
    """LangServe reports any error inside a stream as an opaque in-band event,
    `{"status_code": 500, "message": "Internal Server Error"}`, then re-raises it. This
    holds that event back and, when the exception follows, sends it with the status and
    message chatbot.api.errors gives that exception (400 for a bad knowledge-base name,
    429 for a full queue, ...) plus the OpenAI `error` object; RemoteRunnable raises
    with that status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).endswith(_STREAM_ENDPOINTS):
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal held
            body = message.get("body", b"")
            if message["type"] == "http.response.body" and body.startswith(b"event: error"):
                held = message
                return
            if held is not None:  # the stream went on after it: send the event as it was
                await send(held)
                held = None
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if held is None:
                raise
            # Starlette re-raises an exception it has a handler for as a bare RuntimeError
            # ("response already started") from it: then the cause is what happened. A
            # domain error raised `from` its own cause (ModelLoadError) is mapped as it is.
            cause, api = exc, from_exception(exc)
            if api.status == 500 and api.code is None and isinstance(exc.__cause__, Exception):
                cause = exc.__cause__
                api = from_exception(cause)
            log_error(cause, api)
            sep = b"\r\n" if b"\r\n" in held["body"] else b"\n"
            data = json.dumps({"status_code": api.status, "message": api.message, **api.body()})
            event = b"event: error" + sep + b"data: " + data.encode() + sep + sep
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        if held is not None:
            await send(held)
