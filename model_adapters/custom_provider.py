"""Custom providers: write one `chat` method, get a full LangChain chat model.

```python
from model_adapters.custom_provider import CustomProvider, Reply

class EchoProvider(CustomProvider):
    def chat(self, messages, params):           # messages: [{"role", "content"}, ...]
        return "echo: " + messages[-1]["content"]   # or Reply(text, input_tokens=..)
                                                    # or yield text deltas (streaming)
    def embed(self, texts):                     # optional
        return [[float(len(t))] for t in texts]
```

Register it by dotted path in the registry (`provider: mypkg.echo:EchoProvider`) or as an
entry point in the `chatbot.providers` group (`provider: echo`). The base turns it into a
BaseChatModel (`ChatCustom`: invoke/stream/batch, sync and async, usage when given) and,
if `embed` is implemented, into Embeddings. The provider gets the entry's connection
settings as `self.config` (model, base_url, api_key as SecretStr, headers, timeout, ...).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from chatbot.engines import Engine
from model_adapters.messages import to_chat_dicts

if TYPE_CHECKING:
    from chatbot.registry import ModelEntry
    from chatbot.settings import Settings


@dataclass
class Reply:
    """A reply or a streamed piece of one, with usage if the provider knows it."""

    text: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None


# What `chat` may return.
ChatOutput = str | Reply | Iterable[str | Reply] | AsyncIterator[str | Reply]


class ProviderConfig(BaseModel):
    """What a provider gets from its registry entry."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    model: str = ""
    base_url: str | None = None
    api_key: SecretStr | None = None
    organization: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    http_proxy: str | None = None
    timeout: float | None = None
    max_retries: int = 2
    params: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> ProviderConfig:
        fields = set(cls.model_fields) - {"name", "model"}
        values = {f: getattr(entry, f) for f in fields}
        return cls(name=entry.name, model=entry.model or entry.name, **values)


class CustomProvider:
    """Base class for custom providers. Implement `chat`; the rest is optional."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> ChatOutput:
        """Answer `messages`: a str, a Reply, or an iterator of str/Reply deltas.

        `params` has temperature, max_tokens, top_p, stop, seed (those set), the entry's
        `params`, per-call options, and `stream` (whether the caller streams)."""
        raise NotImplementedError(f"{type(self).__name__} implements only async achat()")

    async def achat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> ChatOutput:
        """Async `chat`. By default runs `chat` in a thread (and its iterator too)."""
        result = await asyncio.to_thread(self.chat, messages, params)
        if isinstance(result, (str, Reply)):
            return result
        return _in_thread(iter(result))  # type: ignore[arg-type]

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError(f"{type(self).__name__} implements only async aembed()")

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed, texts)

    def close(self) -> None:
        """Release clients; called when the model is unloaded."""

    @classmethod
    def as_engine(cls) -> type[Engine]:
        """The engine class the registry uses for this provider (see chatbot.engines)."""
        if "_engine" not in cls.__dict__:
            methods = {"chat": ("chat", "achat"), "embeddings": ("embed", "aembed")}
            kinds = {
                kind
                for kind, names in methods.items()
                if any(getattr(cls, m) is not getattr(CustomProvider, m) for m in names)
            }
            cls._engine = type(
                f"{cls.__name__}Engine",
                (ProviderEngine,),
                {
                    "provider_cls": cls,
                    "name": cls.__name__,
                    "kinds": frozenset(kinds),
                },
            )
        return cls._engine


async def _in_thread(items: Iterator[Any]) -> AsyncIterator[Any]:
    done = object()
    while (item := await asyncio.to_thread(next, items, done)) is not done:
        yield item


def _items(result: Any) -> Iterator[str | Reply]:
    if isinstance(result, (str, Reply)):
        yield result
    else:
        yield from result


async def _aitems(result: Any) -> AsyncIterator[str | Reply]:
    if inspect.isawaitable(result):
        result = await result
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in _items(result):
            yield item


class _Collector:
    """Turns str/Reply items into chunks; usage and finish reason go on the last one."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finish_reason = "stop"

    def chunk(self, item: str | Reply) -> ChatGenerationChunk | None:
        if isinstance(item, Reply):
            self.input_tokens = (
                item.input_tokens if item.input_tokens is not None else self.input_tokens
            )
            self.output_tokens = (
                item.output_tokens if item.output_tokens is not None else self.output_tokens
            )
            self.finish_reason = item.finish_reason or self.finish_reason
            item = item.text
        if not isinstance(item, str):
            raise TypeError(f"provider yielded {type(item).__name__}, expected str or Reply")
        return ChatGenerationChunk(message=AIMessageChunk(content=item)) if item else None

    def last(self) -> ChatGenerationChunk:
        usage = None
        if self.input_tokens is not None or self.output_tokens is not None:
            i, o = self.input_tokens or 0, self.output_tokens or 0
            usage = UsageMetadata(input_tokens=i, output_tokens=o, total_tokens=i + o)
        info = {"finish_reason": self.finish_reason, "model_name": self.model}
        message = AIMessageChunk(
            content="",
            usage_metadata=usage,
            chunk_position="last",
            response_metadata={**info, "model_provider": "custom"},
        )
        return ChatGenerationChunk(message=message, generation_info=info)


class ChatCustom(BaseChatModel):
    """The chat model over a CustomProvider.

    From the registry: `chatbot.get_chat_model("name")`. Directly:
    `ChatCustom(provider="mypkg.mod:MyProvider", model="m", base_url=...)`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    provider: Any = Field(exclude=True, description="A CustomProvider, or its name/path.")
    model: str = Field("", alias="model_name")
    base_url: str | None = None
    api_key: SecretStr | None = None
    timeout: float | None = None
    max_retries: int = 2
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _make_provider(self) -> ChatCustom:
        if isinstance(self.provider, str):
            from chatbot.engines import engine_class

            cls = getattr(engine_class(self.provider), "provider_cls", None)
            if cls is None:
                raise ValueError(f"provider: {self.provider!r} is not a CustomProvider")
            self.provider = cls(
                ProviderConfig(
                    name=self.model,
                    model=self.model,
                    base_url=self.base_url,
                    api_key=self.api_key,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
            )
        if not isinstance(self.provider, CustomProvider):
            raise ValueError("provider: expected a CustomProvider instance or its name")
        return self

    @property
    def _llm_type(self) -> str:
        return "chatbot-custom"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"provider": type(self.provider).__name__, "model": self.model}

    def _params(self, stop: list[str] | None, stream: bool, kwargs: dict[str, Any]) -> dict:
        base = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "stop": stop or self.stop or None,
            "seed": self.seed,
        }
        params = {**self.params, **{k: v for k, v in base.items() if v is not None}}
        return {**params, **{k: v for k, v in kwargs.items() if v is not None}, "stream": stream}

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._run(messages, stop, run_manager, True, kwargs)

    def _run(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        stream: bool,
        kwargs: dict[str, Any],
    ) -> Iterator[ChatGenerationChunk]:
        collector = _Collector(kwargs.get("model") or self.model)
        result = self.provider.chat(to_chat_dicts(messages), self._params(stop, stream, kwargs))
        for item in _items(result):
            if (chunk := collector.chunk(item)) is not None:
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        yield collector.last()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._arun(messages, stop, run_manager, True, kwargs):
            yield chunk

    async def _arun(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        stream: bool,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk]:
        collector = _Collector(kwargs.get("model") or self.model)
        result = self.provider.achat(to_chat_dicts(messages), self._params(stop, stream, kwargs))
        async for item in _aitems(result):
            if (chunk := collector.chunk(item)) is not None:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        yield collector.last()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._run(messages, stop, run_manager, False, kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._arun(messages, stop, run_manager, False, kwargs))


class ProviderEmbeddings(Embeddings):
    def __init__(self, provider: CustomProvider) -> None:
        self.provider = provider

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.provider.embed(list(texts)) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.provider.embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.provider.aembed(list(texts)) if texts else []

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.provider.aembed([text]))[0]


class ProviderEngine(Engine):
    """Adapts a CustomProvider class to the engine interface; one provider per entry."""

    provider_cls: ClassVar[type[CustomProvider]]
    needs_path = False

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        super().__init__(entry, settings)
        self.provider = self.provider_cls(ProviderConfig.from_entry(entry))

    def chat_model(self, **overrides: Any) -> ChatCustom:
        defaults = self.entry.generation_defaults()
        fields = {**defaults, **overrides}
        known = {k: v for k, v in fields.items() if k in ChatCustom.model_fields}
        extra = {k: v for k, v in fields.items() if k not in ChatCustom.model_fields}
        return ChatCustom(
            provider=self.provider,
            model=self.provider.config.model,
            **{**known, "params": {**self.entry.params, **extra}},
        )

    def embeddings(self) -> ProviderEmbeddings:
        return ProviderEmbeddings(self.provider)

    def close(self) -> None:
        self.provider.close()
