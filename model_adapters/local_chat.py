"""`ChatLocal`: the LangChain chat model over any local runtime (transformers, GPTQ, vLLM).

A runtime has `tokenizer`, `context_length` and `submit(GenerationRequest, Sink)`; this
class turns messages into a prompt with the model's chat template, streams the runtime's
deltas as chunks, and reports usage and finish reasons. Tool calling and structured
output (model_adapters.tools, tool_parsers, tool_stream, constrained, structured) are
shared by every local runtime: kwargs `tools`, `tool_choice` and `response_format`
work on invoke/stream/batch, sync and async.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chatbot.engines import Engine
from model_adapters.chat_output import ChatOutput, sampling_fields
from model_adapters.constrained import check_constraint
from model_adapters.generation import GenerationRequest, stream_async, stream_sync
from model_adapters.messages import to_chat_dicts
from model_adapters.offload import Offloader
from model_adapters.prompting import encode, render_chat
from model_adapters.runtime import Runtime
from model_adapters.structured import response_format_constraint, structured_output_runnable
from model_adapters.tool_parsers import PARSERS, get_parser
from model_adapters.tools import (
    add_tools_to_messages,
    forcing_constraint,
    normalize_tool_choice,
    normalize_tools,
    tool_names,
)


class ChatLocal(BaseChatModel):
    """A chat model served by a local runtime.

    Build it through the factory (`chatbot.get_chat_model("name")`) or directly with the
    registry name: `ChatLocal(model="tiny", temperature=0)`; both share loaded weights.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = Field(alias="model_name")
    runtime: Runtime | None = Field(default=None, exclude=True, repr=False)
    # Where prompts are rendered, tokenized and grammars compiled: the catalog's pool.
    preparer: Offloader | None = Field(default=None, exclude=True, repr=False)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None
    stop: list[str] | None = None
    tool_parser: str = "auto"

    @field_validator("tool_parser")
    @classmethod
    def _known_parser(cls, value: str) -> str:
        if value != "auto" and value not in PARSERS:
            raise ValueError(f"unknown tool parser {value!r} (known: auto, {sorted(PARSERS)})")
        return value

    @model_validator(mode="after")
    def _attach_runtime(self) -> ChatLocal:
        if self.runtime is None:
            # `ChatLocal(model="tiny")` on its own: the default catalog's runtime. Looked
            # up by module name at call time: the catalog lives in a layer above this one
            # and hands its runtime in (`runtime=`) whenever it builds a ChatLocal itself.
            factory = importlib.import_module("chatbot.factory")
            self.runtime = factory.default_catalog().runtime(self.model)
        if self.preparer is None:  # likewise: the default catalog's preparation pool
            self.preparer = importlib.import_module("chatbot.factory").default_catalog().prepare
        return self

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.preparer is not None  # set by _attach_runtime
        return await self.preparer.run(fn, *args)

    @property
    def _llm_type(self) -> str:
        return "chatbot-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }

    # --- tools and structured output ---------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, pydantic models, functions, OpenAI dicts).

        tool_choice: "auto" (default), "none", "required"/"any"/True (some tool), or a
        tool name / {"type": "function", "function": {"name": ...}} to force that tool.
        Forced choices are decoded under a grammar, so the call is always valid.
        """
        formatted = normalize_tools(tools)
        normalize_tool_choice(tool_choice, formatted)  # fail now, not at invoke time
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Output that matches `schema` (pydantic, TypedDict, JSON schema), grammar-forced."""
        return structured_output_runnable(self, schema, method, include_raw, **kwargs)

    # --- request building ------------------------------------------------------------

    def prompt_ids(self, messages: list[BaseMessage], tools: list[dict] | None = None) -> list[int]:
        dicts = to_chat_dicts(messages)
        template_tools = None
        if tools:
            parser = get_parser(self.tool_parser, self.runtime.tokenizer)
            dicts, template_tools = add_tools_to_messages(
                dicts, tools, self.runtime.tokenizer, parser
            )
        text = render_chat(self.runtime.tokenizer, dicts, template_tools)
        return encode(self.runtime.tokenizer, text, self.runtime.context_length)

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[GenerationRequest, ChatOutput]:
        tools = normalize_tools(kwargs.get("tools"))
        choice = normalize_tool_choice(kwargs.get("tool_choice"), tools)
        if choice == "none":
            tools = []  # like OpenAI: the model answers in text
        parser = (
            get_parser(self.tool_parser, self.runtime.tokenizer, tool_names(tools))
            if tools
            else None
        )
        max_tokens = int(kwargs.get("max_tokens") or self.max_tokens)
        constraint = None
        if parser is not None:
            # Several calls only when asked: a small model repeats a forced call otherwise.
            parallel = kwargs.get("parallel_tool_calls") is True
            constraint = forcing_constraint(tools, choice, parser, max_tokens, parallel)
        if constraint is None:
            constraint = response_format_constraint(kwargs.get("response_format"), max_tokens)
        if constraint is not None:
            model = getattr(self.runtime, "model", None)
            check_constraint(constraint, self.runtime.tokenizer, getattr(model, "config", None))
        prompt = self.prompt_ids(messages, tools)
        request = self.request_for_prompt(prompt, stop, **{**kwargs, "constraint": constraint})
        return request, ChatOutput(self.model, parser, self.runtime.tokenizer)

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> GenerationRequest:
        return self._prepare(messages, stop, kwargs)[0]

    def request_for_prompt(
        self, prompt_ids: list[int], stop: list[str] | None = None, **kwargs: Any
    ) -> GenerationRequest:
        stops = list(stop if stop is not None else self.stop or [])
        return GenerationRequest(
            prompt_ids=prompt_ids,
            max_tokens=int(kwargs.get("max_tokens") or self.max_tokens),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p") or self.top_p),
            seed=kwargs.get("seed", self.seed),
            stop=stops,
            constraint=kwargs.get("constraint"),
            **sampling_fields(kwargs, len(self.runtime.tokenizer)),
        )

    # --- raw prompts (the legacy completions API): no chat template ------------------

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a raw prompt (text, or ids checked against the vocabulary). A text
        too long to fit the context is refused before tokenizing (ContextLengthError)."""
        tokenizer = self.runtime.tokenizer
        if isinstance(prompt, list):
            ids = list(prompt)
        else:
            ids = encode(tokenizer, prompt, self.runtime.context_length)
        if not ids:
            raise ValueError("'prompt' must not be empty.")
        if min(ids) < 0 or max(ids) >= len(tokenizer):
            raise ValueError(f"'prompt' has token ids outside 0..{len(tokenizer) - 1}.")
        return ids

    async def aencode_prompt(self, prompt: str | list[int]) -> list[int]:
        """`encode_prompt` off the event loop: a huge prompt must not stall other clients."""
        return await self._offload(self.encode_prompt, prompt)

    def decode_prompt(self, prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.runtime.tokenizer.decode(prompt, skip_special_tokens=False)

    async def astream_prompt(
        self, prompt: str | list[int], stop: list[str] | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        """Generate straight from a raw prompt: the same chunks (usage, finish reason)
        as `astream` gives for messages."""
        ids = prompt if isinstance(prompt, list) else await self.aencode_prompt(prompt)
        ids = self.encode_prompt(ids)
        request = self.request_for_prompt(ids, stop, **kwargs)
        output = ChatOutput(self.model, None, self.runtime.tokenizer, prompt_ids=ids)
        async for chunk in self._run_async(request, output, None):
            yield chunk.message  # type: ignore[misc]

    # --- generation: _stream and _astream share ChatOutput, _generate reuses them -------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request, output = self._prepare(messages, stop, kwargs)
        yield from self._run_sync(request, output, run_manager)

    def _run_sync(
        self,
        request: GenerationRequest,
        output: ChatOutput,
        run_manager: CallbackManagerForLLMRun | None,
    ) -> Iterator[ChatGenerationChunk]:
        for delta in stream_sync(self.runtime.submit, request):
            for chunk in output.chunks(delta):
                if run_manager and (chunk.text or chunk.message.tool_call_chunks):
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Templates, tokenizing and grammar compilation leave the event loop.
        request, output = await self._offload(self._prepare, messages, stop, kwargs)
        async for chunk in self._run_async(request, output, run_manager):
            yield chunk

    async def _run_async(
        self,
        request: GenerationRequest,
        output: ChatOutput,
        run_manager: AsyncCallbackManagerForLLMRun | None,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for delta in stream_async(self.runtime.submit, request):
            for chunk in output.chunks(delta):
                if run_manager and (chunk.text or chunk.message.tool_call_chunks):
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, output = self._prepare(messages, stop, kwargs)
        return output.result(list(self._run_sync(request, output, run_manager)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, output = await self._offload(self._prepare, messages, stop, kwargs)
        chunks = [c async for c in self._run_async(request, output, run_manager)]
        return output.result(chunks)


class LocalEngine(Engine):
    """Base for engines whose weights live in this process behind a runtime
    (`self.runtime`, a model_adapters.runtime.Runtime): they all serve `ChatLocal`.
    The catalog passes `runtime=` (its pooled wrapper) when it builds chat models."""

    runtime: Runtime

    def chat_model(self, **overrides: Any) -> ChatLocal:
        defaults = self.entry.generation_defaults()
        params = {
            "runtime": self.runtime,
            **defaults,
            "tool_parser": self.entry.tool_parser,
            **overrides,
        }
        return ChatLocal(model=self.entry.name, **params)

    def memory_bytes(self) -> int:
        return self.runtime.memory_bytes()

    def close(self) -> None:
        self.runtime.close()
