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

Tried = list[tuple[str, BaseException]]  # (source, its error), for AllReplicasFailed


def _has_token(chunk: AIMessageChunk) -> bool:
    return bool(chunk.content) or bool(chunk.tool_call_chunks)


def _to_generation(chunk: AIMessageChunk) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=chunk)


def _token(chunk: AIMessageChunk) -> str | None:
    """The text for callbacks' on_llm_new_token (None: no text in this chunk)."""
    return chunk.content if isinstance(chunk.content, str) and chunk.content else None


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
    # _stream and _astream are the same loop, one sync and one async; what they decide
    # (hold, pass on, fail over, give up) is in _StreamAttempt and the helpers below.

    def _attempts(self) -> Iterator[_StreamAttempt]:
        """Replicas in the pool's order (each acquired), then the fallback models."""
        names: set[str] = set()
        while (member := self.pool.acquire(names, probe=not self.fallbacks)) is not None:
            names.add(member.label)
            yield _StreamAttempt(self, member.label, self._replica(member), member)
        for name in self.fallbacks:
            yield _StreamAttempt(self, f"fallback {name!r}", self._fallback(name))

    def _pause(self, tried: Tried, attempt: _StreamAttempt) -> float | None:
        """Seconds to wait before retrying on another replica (None: go on at once)."""
        if tried and attempt.member is not None:
            return self.pool.backoff(len(tried))
        return None

    def _all_failed(self, tried: Tried) -> AllReplicasFailed:
        return AllReplicasFailed(self.model, tried, self.pool.cooling({t for t, _ in tried}))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        tried: Tried = []
        for attempt in self._attempts():
            if (pause := self._pause(tried, attempt)) is not None:
                time.sleep(pause)
            try:
                for chunk in attempt.chat.stream(messages, stop=stop, **kwargs):
                    for part in attempt.feed(chunk):
                        if run_manager and (token := _token(part)):
                            run_manager.on_llm_new_token(token)
                        yield _to_generation(part)
                for part in attempt.rest():
                    yield _to_generation(part)
            except Exception as exc:
                if not attempt.fail(exc):
                    raise
                tried.append((attempt.label, exc))
                continue
            finally:  # also when the caller stops reading early
                attempt.release()
            return
        raise self._all_failed(tried)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        tried: Tried = []
        for attempt in self._attempts():
            if (pause := self._pause(tried, attempt)) is not None:
                await asyncio.sleep(pause)
            try:
                async for chunk in attempt.chat.astream(messages, stop=stop, **kwargs):
                    for part in attempt.feed(chunk):
                        if run_manager and (token := _token(part)):
                            await run_manager.on_llm_new_token(token)
                        yield _to_generation(part)
                for part in attempt.rest():
                    yield _to_generation(part)
            except Exception as exc:
                if not attempt.fail(exc):
                    raise
                tried.append((attempt.label, exc))
                continue
            finally:  # also when the caller stops reading early
                attempt.release()
            return
        raise self._all_failed(tried)


class _StreamAttempt:
    """One source's try at a stream. Chunks without a token are held back (failing over
    is still safe before the first token), then passed on with the first that has one."""

    def __init__(
        self, router: ChatRouter, label: str, chat: BaseChatModel, member: Member | None = None
    ) -> None:
        self.router = router
        self.label = label
        self.chat = chat
        self.member = member  # None: a fallback model (not one of the pool's replicas)
        self.held: list[AIMessageChunk] = []
        self.sent = False
        self.failure: Exception | None = None

    def feed(self, chunk: AIMessageChunk) -> list[AIMessageChunk]:
        """The chunks to pass on now that `chunk` came."""
        if self.sent:
            return [chunk]
        if not _has_token(chunk):
            self.held.append(chunk)
            return []
        parts, self.held, self.sent = [*self.held, chunk], [], True
        return parts

    def rest(self) -> list[AIMessageChunk]:
        """The chunks still held when the stream ended without a token."""
        parts, self.held = self.held, []
        return parts

    def fail(self, exc: Exception) -> bool:
        """Whether the next source may be tried after `exc`; once a token was passed on,
        StreamInterrupted (the caller has part of an answer)."""
        self.failure = exc
        if self.sent:
            raise StreamInterrupted(
                f"model {self.router.model!r}: {self.label} failed after the "
                f"first token ({type(exc).__name__}: {exc})"
            ) from exc
        return self.member is None or is_replica_failure(exc)

    def release(self) -> None:
        """Give the replica back to the pool (a replica failure puts it in cooldown)."""
        if self.member is not None:
            bad = self.failure is not None and is_replica_failure(self.failure)
            self.router.pool.release(self.member, self.failure if bad else None)


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
