"""`ChatLocal`: the LangChain chat model over any local runtime (transformers, GPTQ, vLLM).

A runtime has `tokenizer`, `context_length` and `submit(GenerationRequest, Sink)`; this
class turns messages into a prompt with the model's chat template, streams the runtime's
deltas as chunks, and reports usage and finish reasons. Tool calling and structured
output live in model_adapters.tools, shared by every local runtime.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from model_adapters.generation import Delta, GenerationRequest, stream_async, stream_sync
from model_adapters.messages import to_chat_dicts
from model_adapters.prompting import encode, render_chat


class ChatLocal(BaseChatModel):
    """A chat model served by a local runtime.

    Build it through the factory (`chatbot.get_chat_model("name")`) or directly with the
    registry name: `ChatLocal(model="tiny", temperature=0)`; both share loaded weights.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = Field(alias="model_name")
    runtime: Any = Field(default=None, exclude=True, repr=False)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None
    stop: list[str] | None = None
    tool_parser: str = "auto"

    @model_validator(mode="after")
    def _attach_runtime(self) -> ChatLocal:
        if self.runtime is None:
            from chatbot.factory import get_engine

            self.runtime = get_engine(self.model).runtime
        return self

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

    # --- request building ------------------------------------------------------------

    def prompt_ids(self, messages: list[BaseMessage], tools: list[dict] | None = None) -> list[int]:
        text = render_chat(self.runtime.tokenizer, to_chat_dicts(messages), tools)
        return encode(self.runtime.tokenizer, text)

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> GenerationRequest:
        prompt = self.prompt_ids(messages, kwargs.get("tools"))
        return self.request_for_prompt(prompt, stop, **kwargs)

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
        )

    # --- deltas -> chunks ------------------------------------------------------------

    def _chunk(self, delta: Delta) -> ChatGenerationChunk:
        if delta.finish_reason is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=delta.text))
        usage = UsageMetadata(
            input_tokens=delta.prompt_tokens,
            output_tokens=delta.completion_tokens,
            total_tokens=delta.prompt_tokens + delta.completion_tokens,
        )
        info = {"finish_reason": delta.finish_reason, "model_name": self.model}
        message = AIMessageChunk(
            content=delta.text,
            usage_metadata=usage,
            response_metadata={**info, "model_provider": "chatbot"},
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info=info)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, **kwargs)
        for delta in stream_sync(self.runtime.submit, request):
            chunk = self._chunk(delta)
            if run_manager and delta.text:
                run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, **kwargs)
        async for delta in stream_async(self.runtime.submit, request):
            chunk = self._chunk(delta)
            if run_manager and delta.text:
                await run_manager.on_llm_new_token(delta.text, chunk=chunk)
            yield chunk

    @staticmethod
    def _result(chunks: list[ChatGenerationChunk]) -> ChatResult:
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        msg = merged.message
        message = AIMessage(
            content=msg.content,
            usage_metadata=msg.usage_metadata,
            response_metadata=msg.response_metadata,
            id=msg.id,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=merged.generation_info)]
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(list(self._stream(messages, stop, run_manager, **kwargs)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [c async for c in self._astream(messages, stop, run_manager, **kwargs)]
        return self._result(chunks)
