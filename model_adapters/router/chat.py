"""`ChatRouter` and `RouterEmbeddings`: the LangChain faces of model_adapters.router."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from chatbot.errors import AllReplicasFailed, StreamInterrupted
from model_adapters.router.replicas import (
    FallbackResolver,
    Member,
    ReplicaPool,
    is_replica_failure,
)

__all__ = ["ChatRouter", "RouterEmbeddings", "StreamInterrupted"]


def _has_token(chunk: AIMessageChunk) -> bool:
    return bool(chunk.content) or bool(chunk.tool_call_chunks)


def _to_generation(chunk: AIMessageChunk) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=chunk)


class ChatRouter(BaseChatModel):
    """A chat model over a registry entry's replicas and fallbacks.

    Build it with `chatbot.get_chat_model("name")` for an entry that has `replicas` or
    `fallbacks`; the health state is shared by every instance of that entry.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str
    pool: ReplicaPool = Field(exclude=True, repr=False)
    fallbacks: list[str] = Field(default_factory=list)
    overrides: dict[str, Any] = Field(default_factory=dict)
    resolver: Any = Field(exclude=True, repr=False)  # a FallbackResolver (the catalog)
    _models: dict[str, BaseChatModel] = PrivateAttr(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "chatbot-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self.overrides}

    def bind_tools(
        self,
        tools: Sequence[dict | type | Callable | BaseTool],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        # OpenAI-format tools are what every inner model (ChatOpenAI, ChatLocal) accepts.
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    # --- inner models ----------------------------------------------------------------

    def _replica(self, member: Member) -> BaseChatModel:
        if member.label not in self._models:
            self._models[member.label] = member.engine.chat_model(**self.overrides)
        return self._models[member.label]

    def _fallback(self, name: str) -> BaseChatModel:
        key = f"fallback:{name}"
        if key not in self._models:
            self._models[key] = self.resolver.chat_model(name, **self.overrides)
        return self._models[key]

    @staticmethod
    def _result(message: BaseMessage, replica: str) -> ChatResult:
        message.response_metadata = {**message.response_metadata, "replica": replica}
        return ChatResult(generations=[ChatGeneration(message=message)])

    # --- one-shot --------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        def call(member: Member) -> ChatResult:
            reply = self._replica(member).invoke(messages, stop=stop, **kwargs)
            return self._result(reply, member.label)

        def fallback(name: str) -> Callable[[], ChatResult]:
            return lambda: self._result(
                self._fallback(name).invoke(messages, stop=stop, **kwargs), name
            )

        return self.pool.run(call, [(n, fallback(n)) for n in self.fallbacks])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async def call(member: Member) -> ChatResult:
            reply = await self._replica(member).ainvoke(messages, stop=stop, **kwargs)
            return self._result(reply, member.label)

        def fallback(name: str) -> Callable[[], Any]:
            async def run() -> ChatResult:
                reply = await self._fallback(name).ainvoke(messages, stop=stop, **kwargs)
                return self._result(reply, name)

            return run

        return await self.pool.arun(call, [(n, fallback(n)) for n in self.fallbacks])

    # --- streaming: fail over until the first token ---------------------------------

    def _sources(self) -> Iterator[tuple[str, Member | None, BaseChatModel]]:
        """Replicas in the pool's order (each acquired), then the fallback models."""
        names: set[str] = set()
        while (member := self.pool.acquire(names, probe=not self.fallbacks)) is not None:
            names.add(member.label)
            yield member.label, member, self._replica(member)
        for name in self.fallbacks:
            yield f"fallback {name!r}", None, self._fallback(name)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        tried: list[tuple[str, BaseException]] = []
        for label, member, model in self._sources():
            if tried and member is not None:
                time.sleep(self.pool.backoff(len(tried)))
            held: list[AIMessageChunk] = []  # chunks without a token yet: failover is still safe
            sent, failure = False, None
            try:
                for chunk in model.stream(messages, stop=stop, **kwargs):
                    if not sent and not _has_token(chunk):
                        held.append(chunk)
                        continue
                    for part in [*held, chunk] if not sent else [chunk]:
                        if run_manager and isinstance(part.content, str) and part.content:
                            run_manager.on_llm_new_token(part.content)
                        yield _to_generation(part)
                    sent, held = True, []
                for part in held:
                    yield _to_generation(part)
            except Exception as exc:
                failure = exc
                if sent:
                    raise StreamInterrupted(
                        f"model {self.model!r}: {label} failed after the "
                        f"first token ({type(exc).__name__}: {exc})"
                    ) from exc
                if member is not None and not is_replica_failure(exc):
                    raise
                tried.append((label, exc))
                continue
            finally:  # also when the caller stops reading early
                if member is not None:
                    bad = failure is not None and is_replica_failure(failure)
                    self.pool.release(member, failure if bad else None)
            return
        raise AllReplicasFailed(self.model, tried, self.pool.cooling({t for t, _ in tried}))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        tried: list[tuple[str, BaseException]] = []
        for label, member, model in self._sources():
            if tried and member is not None:
                await asyncio.sleep(self.pool.backoff(len(tried)))
            held: list[AIMessageChunk] = []
            sent, failure = False, None
            try:
                async for chunk in model.astream(messages, stop=stop, **kwargs):
                    if not sent and not _has_token(chunk):
                        held.append(chunk)
                        continue
                    for part in [*held, chunk] if not sent else [chunk]:
                        if run_manager and isinstance(part.content, str) and part.content:
                            await run_manager.on_llm_new_token(part.content)
                        yield _to_generation(part)
                    sent, held = True, []
                for part in held:
                    yield _to_generation(part)
            except Exception as exc:
                failure = exc
                if sent:
                    raise StreamInterrupted(
                        f"model {self.model!r}: {label} failed after the "
                        f"first token ({type(exc).__name__}: {exc})"
                    ) from exc
                if member is not None and not is_replica_failure(exc):
                    raise
                tried.append((label, exc))
                continue
            finally:  # also when the caller stops reading early
                if member is not None:
                    bad = failure is not None and is_replica_failure(failure)
                    self.pool.release(member, failure if bad else None)
            return
        raise AllReplicasFailed(self.model, tried, self.pool.cooling({t for t, _ in tried}))


class RouterEmbeddings(Embeddings):
    """Embeddings over an entry's replicas, then its fallback embeddings entries."""

    def __init__(self, pool: ReplicaPool, fallbacks: list[str], resolver: FallbackResolver) -> None:
        self.pool = pool
        self.fallbacks = fallbacks
        self.resolver = resolver

    def _fallback(self, name: str) -> Embeddings:
        return self.resolver.embeddings(name)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.pool.run(
            lambda m: m.engine.embeddings().embed_documents(texts),
            [(n, lambda n=n: self._fallback(n).embed_documents(texts)) for n in self.fallbacks],
        )

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.pool.arun(
            lambda m: m.engine.embeddings().aembed_documents(texts),
            [(n, lambda n=n: self._fallback(n).aembed_documents(texts)) for n in self.fallbacks],
        )

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]
