"""What the server needs to serve the chains.

- `chain_runnables(catalog)`: the runnables the server mounts at `/chains/rag`,
  `/chains/conversation`, `/chains/agent` as LangServe routes.
- `resolve_rag_model("docs", catalog)` / `("docs/tiny", catalog)`: the chat model behind
  `model: "rag:docs"` (default model) or `"rag:docs/tiny"` on /v1/chat/completions. Its
  messages carry the sources in `response_metadata["sources"]`; the OpenAI routes send
  them as an extra top-level `sources` field.

Models come from the catalog passed in (the server's own); errors are domain errors
(chatbot.errors), which the HTTP layer maps to statuses. Nothing here imports it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from chains.agent import AgentOutput, agent_runnable, build_agent
from chains.conversation import build_conversation_chain, get_history, history_url
from chains.kb import UnknownKB, open_store
from chains.rag import (
    SYSTEM_PROMPT,
    RagOutput,
    build_rag_chain,
    fit_docs,
    format_context,
    to_sources,
)
from chatbot.errors import ModelNotFoundError

if TYPE_CHECKING:
    from chatbot.catalog import ModelCatalog
    from chatbot.settings import Settings

SOURCES = "sources"


class RagChatModel(BaseChatModel):
    """A chat model that answers from a knowledge base: the last user message is the
    question, retrieved passages go in a system message, and the first chunk's
    `response_metadata["sources"]` lists them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: BaseChatModel
    retriever: BaseRetriever
    kb: str

    @property
    def _llm_type(self) -> str:
        return "rag"

    def _question(self, messages: list[BaseMessage]) -> str:
        for message in reversed(messages):
            if isinstance(message, HumanMessage) and message.text.strip():
                return message.text
        raise ValueError("messages: a RAG model needs a user message to answer")

    def _prompt(self, messages: list[BaseMessage], docs: list) -> tuple[list[BaseMessage], list]:
        docs = fit_docs(self.llm, docs, self._question(messages))
        system = SystemMessage(SYSTEM_PROMPT.format(context=format_context(docs)))
        return [system, *messages], to_sources(docs)

    @staticmethod
    def _wrap(chunk: AIMessageChunk, sources: list | None) -> ChatGenerationChunk:
        if sources is not None:
            chunk = chunk.model_copy(
                update={"response_metadata": {**chunk.response_metadata, SOURCES: sources}}
            )
        return ChatGenerationChunk(message=chunk)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        docs = self.retriever.invoke(self._question(messages))
        prompt, sources = self._prompt(messages, docs)
        pending: list | None = sources
        for chunk in self.llm.stream(prompt, stop=stop, **kwargs):
            yield self._wrap(chunk, pending)  # type: ignore[arg-type]
            pending = None

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        docs = await self.retriever.ainvoke(self._question(messages))
        prompt, sources = self._prompt(messages, docs)
        pending: list | None = sources
        async for chunk in self.llm.astream(prompt, stop=stop, **kwargs):
            yield self._wrap(chunk, pending)  # type: ignore[arg-type]
            pending = None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from langchain_core.language_models.chat_models import generate_from_stream

        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from langchain_core.language_models.chat_models import agenerate_from_stream

        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


async def resolve_rag_model(
    spec: str,
    catalog: ModelCatalog,
    k: int = 4,
    *,
    settings: Settings | None = None,
    **overrides: Any,
) -> RagChatModel:
    """`"kb"` or `"kb/model"` (the part after `rag:`) -> a RagChatModel; the model must be
    served (404 otherwise), an unknown KB is a 404 and an empty one a 400. `settings`:
    the serving app's (default: the process's)."""
    kb_name, _, model_name = spec.partition("/")
    entry = catalog.served_entry(model_name or None, "chat")
    try:
        store = await asyncio.to_thread(open_store, kb_name, None, settings)
    except UnknownKB as exc:
        raise ModelNotFoundError(f"rag:{spec}", "chat", str(exc)) from None
    await asyncio.to_thread(catalog.load, entry)
    llm = catalog.chat_model(entry.name, **overrides)
    return RagChatModel(llm=llm, retriever=store.as_retriever(search_kwargs={"k": k}), kb=kb_name)


# --- /chains/{name} ----------------------------------------------------------------


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _blank_default(schema: dict[str, Any]) -> None:
    if schema.get("default", "") is None:
        schema["default"] = ""


# An optional string, shown in JSON schema as a string defaulting to "": LangServe's
# playground form cannot render `anyOf: [string, null]` (a blank page: `Unknown type:
# {"type":"null"}`) and flags a null default as "must be string". Blank means not given.
OptionalStr = Annotated[
    str | None,
    BeforeValidator(_blank_is_none),
    WithJsonSchema({"type": "string"}),
    Field(json_schema_extra=_blank_default),
]


class _NamesKB(BaseModel):
    """A request naming a knowledge base: checked while LangServe validates the input (a
    bad or unknown knowledge base is a 4xx before a stream starts, not an error inside
    it), among the KBs of `kb_settings` (`for_settings`: the serving app's)."""

    kb_settings: ClassVar[Settings | None] = None

    @field_validator("kb", check_fields=False)
    @classmethod
    def _existing_kb(cls, name: str | None) -> str | None:
        from chains.kb import read_manifest

        if name is not None:
            read_manifest(name, cls.kb_settings)  # KBError (a ValueError): bad name, no KB
        return name

    @classmethod
    def for_settings(cls, settings: Settings | None) -> type[Any]:
        return type(cls.__name__, (cls,), {"kb_settings": settings, "__module__": cls.__module__})


class RagRequest(_NamesKB):
    question: str = Field(min_length=1)
    kb: str = Field(description="Knowledge base to answer from (chatbot kb list).")
    model: OptionalStr = Field(None, description="Served chat model (default: the default).")
    k: int = Field(4, ge=1, le=50, description="Passages to retrieve.")


class ConversationRequest(BaseModel):
    input: str = Field(min_length=1)
    session_id: str = Field(min_length=1, max_length=256)
    model: OptionalStr = None
    system_prompt: OptionalStr = None


class AgentRequest(_NamesKB):
    input: str = Field(min_length=1)
    kb: OptionalStr = Field(None, description="Adds a search tool over this knowledge base.")
    model: OptionalStr = None


def _model(catalog: ModelCatalog, name: str | None) -> BaseChatModel:
    entry = catalog.served_entry(name, "chat")
    catalog.load(entry)  # a failure: ModelLoadError, a 503 naming the model (as on /v1)
    return catalog.chat_model(entry.name)


def _request(model: type[BaseModel], value: Any) -> Any:
    data = value.model_dump() if isinstance(value, BaseModel) else value
    return model.model_validate(data)


def rag_runnable(catalog: ModelCatalog, settings: Settings | None = None) -> Runnable:
    request_type = RagRequest.for_settings(settings)

    def build(value: Any) -> Runnable:
        req = _request(request_type, value)
        store = open_store(req.kb, settings=settings)  # this server's KBs
        return build_rag_chain(model=_model(catalog, req.model), store=store, k=req.k)

    return RunnableLambda(build, name="rag").with_types(
        input_type=request_type, output_type=RagOutput
    )


def conversation_runnable(catalog: ModelCatalog, settings: Settings | None = None) -> Runnable:
    def build(value: Any) -> Runnable:
        req = _request(ConversationRequest, value)
        model = _model(catalog, req.model)
        url = history_url(settings)
        history = functools.partial(get_history, url=url)
        return build_conversation_chain(
            model, system_prompt=req.system_prompt, get_session_history=history
        )

    return RunnableLambda(build, name="conversation").with_types(
        input_type=ConversationRequest, output_type=AIMessage
    )


def agent_chain_runnable(catalog: ModelCatalog, settings: Settings | None = None) -> Runnable:
    request_type = AgentRequest.for_settings(settings)

    def build(value: Any) -> Runnable:
        req = _request(request_type, value)
        model = _model(catalog, req.model)
        return agent_runnable(build_agent(model, kb=req.kb, settings=settings))

    return RunnableLambda(build, name="agent").with_types(
        input_type=request_type, output_type=AgentOutput
    )


def chain_runnables(catalog: ModelCatalog, settings: Settings | None = None) -> dict[str, Runnable]:
    """The chains the server mounts at /chains/{name}, over models of `catalog`, with the
    knowledge bases and histories of `settings` (the app's; default: the process's)."""
    return {
        "rag": rag_runnable(catalog, settings),
        "conversation": conversation_runnable(catalog, settings),
        "agent": agent_chain_runnable(catalog, settings),
    }
