"""The ingress side of a Ray Serve deployment: an engine whose chat model and embeddings
call a model deployment through its Ray Serve handle.

The ingress runs the ordinary app (`chatbot.api.create_app`) on a registry whose local
entries use this engine (`engines: ["chatbot.deploy.remote:RayServeEngine"]`, `model:
"<app>/<deployment>"`), so every route, the auth and the metrics are the same code as
`chatbot serve`. A call that fails because its replica died before any output reached
the caller is sent again (Ray Serve routes it to a live replica); once output has been
passed on, a failure ends the stream as it would in one process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, PrivateAttr

from chatbot.engines import Engine
from chatbot.registry import ModelEntry
from chatbot.settings import Settings

log = logging.getLogger(__name__)

ATTEMPTS = 5  # a dead replica is dropped from routing within a retry or two
BACKOFF = 0.2


def _retriable() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError

    return (RayActorError, ActorUnavailableError, DeploymentUnavailableError)


def _unwrap(exc: BaseException) -> BaseException:
    """The replica's own exception (e.g. ContextLengthError -> 400), not Ray's wrapper."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    return exc


def _visible(chunk: AIMessageChunk) -> bool:
    return bool(chunk.content or chunk.tool_call_chunks)


class RemoteCalls:
    """Retry policy around one deployment handle; counts what it retried."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name
        self.retries = 0

    def _note_retry(self, attempt: int, exc: BaseException) -> float:
        self.retries += 1
        log.warning(
            "model %s: replica lost before output (%s); retry %d",
            self.name,
            type(exc).__name__,
            attempt + 1,
        )
        return BACKOFF * 2**attempt

    async def astream(self, payload: dict[str, Any]) -> AsyncIterator[AIMessageChunk]:
        for attempt in range(ATTEMPTS):
            held: list[AIMessageChunk] | None = []  # None once output was passed on
            gen = self.handle.options(stream=True).chat.remote(payload)
            try:
                async for chunk in gen:
                    if held is not None:
                        if not _visible(chunk):
                            held.append(chunk)
                            continue
                        for early in held:
                            yield early
                        held = None
                    yield chunk
            except _retriable() as exc:
                if held is None or attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(self._note_retry(attempt, exc))
                continue
            except (GeneratorExit, asyncio.CancelledError):
                gen.cancel()  # the client went away: the replica aborts the generation
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised as the replica's own error
                raise _unwrap(exc) from None
            for late in held or ():
                yield late
            return

    def stream(self, payload: dict[str, Any]) -> Iterator[AIMessageChunk]:
        for attempt in range(ATTEMPTS):
            started = False
            try:
                for chunk in self.handle.options(stream=True).chat.remote(payload):
                    started = started or _visible(chunk)
                    yield chunk
            except _retriable() as exc:
                if started or attempt == ATTEMPTS - 1:
                    raise
                time.sleep(self._note_retry(attempt, exc))
                continue
            except Exception as exc:  # noqa: BLE001
                raise _unwrap(exc) from None
            return

    async def acall(self, method: str, *args: Any) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                return await getattr(self.handle, method).remote(*args)
            except _retriable() as exc:
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(self._note_retry(attempt, exc))
            except Exception as exc:  # noqa: BLE001
                raise _unwrap(exc) from None

    def call(self, method: str, *args: Any) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                return getattr(self.handle, method).remote(*args).result()
            except _retriable() as exc:
                if attempt == ATTEMPTS - 1:
                    raise
                time.sleep(self._note_retry(attempt, exc))
            except Exception as exc:  # noqa: BLE001
                raise _unwrap(exc) from None


class RemoteChatModel(BaseChatModel):
    """A chat model served by a Ray Serve deployment of `chatbot.deploy.ray_serve`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str
    overrides: dict[str, Any] = {}
    supports_tools: bool = True
    supports_response_format: bool = True
    _calls: RemoteCalls = PrivateAttr()

    def __init__(self, calls: RemoteCalls, **data: Any) -> None:
        super().__init__(**data)
        self._calls = calls

    @property
    def _llm_type(self) -> str:
        return "chatbot-ray-serve"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self.overrides}

    def bind_tools(self, tools: Any, tool_choice: Any = None, **kwargs: Any) -> Any:
        # Tools travel as OpenAI dicts; the replica binds them to its local model.
        spec = {"tools": [convert_to_openai_tool(t) for t in tools], **kwargs}
        if tool_choice is not None:
            spec["tool_choice"] = tool_choice
        return self.bind(remote_tools=spec)

    def _payload(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> dict:
        tools = kwargs.pop("remote_tools", None)
        return {
            "messages": messages,
            "stop": stop,
            "overrides": self.overrides,
            "tools": tools,
            "kwargs": kwargs,
        }

    def _stream(self, messages, stop=None, run_manager=None, **kwargs) -> Iterator[Any]:
        for chunk in self._calls.stream(self._payload(messages, stop, kwargs)):
            if run_manager and isinstance(chunk.content, str) and chunk.content:
                run_manager.on_llm_new_token(chunk.content)
            yield ChatGenerationChunk(message=chunk)

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs) -> AsyncIterator:
        async for chunk in self._calls.astream(self._payload(messages, stop, kwargs)):
            if run_manager and isinstance(chunk.content, str) and chunk.content:
                await run_manager.on_llm_new_token(chunk.content)
            yield ChatGenerationChunk(message=chunk)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        from langchain_core.language_models.chat_models import generate_from_stream

        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        from langchain_core.language_models.chat_models import agenerate_from_stream

        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


class RemoteEmbeddings(Embeddings):
    def __init__(self, calls: RemoteCalls) -> None:
        self._calls = calls

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._calls.call("embed_documents", texts)

    def embed_query(self, text: str) -> list[float]:
        return self._calls.call("embed_query", text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self._calls.acall("embed_documents", texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await self._calls.acall("embed_query", text)


class RayServeEngine(Engine):
    """`model: "<app>/<deployment>"`: the model deployment this ingress entry calls."""

    name = "ray-serve"
    kinds = frozenset({"chat", "embeddings"})
    needs_path = False

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from ray import serve

        super().__init__(entry, settings)
        app_name, _, deployment = (entry.model or "").partition("/")
        self.calls = RemoteCalls(serve.get_deployment_handle(deployment, app_name), entry.name)
        # Waits for one replica to answer: /ready is 503 until the model is up somewhere.
        self.info: dict[str, Any] = self.calls.call("info")

    def chat_model(self, **overrides: Any) -> BaseChatModel:
        return RemoteChatModel(
            self.calls,
            model_name=self.entry.name,
            overrides=overrides,
            supports_tools=self.info.get("tools", True),
            supports_response_format=self.info.get("response_format", True),
        )

    def embeddings(self) -> Embeddings:
        return RemoteEmbeddings(self.calls)
