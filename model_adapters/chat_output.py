"""What ChatLocal hands back: runtime deltas -> LangChain chunks and results (text, tool
calls parsed as they stream, usage, finish reasons, logprobs), and invoke kwargs ->
GenerationRequest sampling fields."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from model_adapters.generation import Delta
from model_adapters.tool_parsers import ParsedOutput, ToolCallParser
from model_adapters.tool_stream import ToolCallStream

SAMPLING_KWARGS = (
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "top_k",
    "min_p",
    "logit_bias",
    "logprobs",
    "top_logprobs",
)


def sampling_fields(kwargs: dict[str, Any], vocab: int) -> dict[str, Any]:
    """Invoke kwargs (OpenAI/vLLM names) -> GenerationRequest sampling fields; a ValueError
    names a bad one. `logprobs`: True (chat, with `top_logprobs`) or N (legacy)."""
    out: dict[str, Any] = {}
    for name in ("presence_penalty", "frequency_penalty", "min_p"):
        if kwargs.get(name) is not None:
            out[name] = float(kwargs[name])
    if kwargs.get("repetition_penalty") is not None:
        if float(kwargs["repetition_penalty"]) <= 0:
            raise ValueError("'repetition_penalty' must be > 0.")
        out["repetition_penalty"] = float(kwargs["repetition_penalty"])
    if kwargs.get("top_k") is not None:
        out["top_k"] = max(0, int(kwargs["top_k"]))  # -1 or 0: off (vLLM)
    bias = kwargs.get("logit_bias")
    if bias:
        try:
            ids = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise ValueError("'logit_bias' maps token ids (integers) to numbers.") from None
        if any(not 0 <= i < vocab for i in ids):
            raise ValueError(f"'logit_bias' has token ids outside 0..{vocab - 1}.")
        out["logit_bias"] = ids
    logprobs = kwargs.get("logprobs")
    if logprobs is True:
        out["logprobs"] = int(kwargs.get("top_logprobs") or 0)
    elif isinstance(logprobs, int) and not isinstance(logprobs, bool):
        out["logprobs"] = logprobs
    if kwargs.get("prompt_logprobs") is not None:
        out["prompt_logprobs"] = int(kwargs["prompt_logprobs"])
    return out


def chat_logprobs(tokenizer: Any, entries: list[Any]) -> list[dict[str, Any]]:
    """TokenLogprobs -> OpenAI chat `logprobs.content` items."""

    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [
        {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
        for e in entries
    ]


class ChatOutput:
    """Runtime deltas -> message chunks for one request; tool calls parsed as they stream."""

    def __init__(
        self,
        model: str,
        parser: ToolCallParser | None,
        tokenizer: Any = None,
        prompt_ids: list[int] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids  # a raw prompt's ids: its first token has no logprob
        self.stream = ToolCallStream(parser) if parser else None
        self.parsed: ParsedOutput | None = None

    def chunks(self, delta: Delta) -> list[ChatGenerationChunk]:
        if delta.prompt_logprobs is not None:  # echo: the prompt's tokens, once, first
            return [ChatGenerationChunk(message=self._prompt_logprobs(delta.prompt_logprobs))]
        text, calls = delta.text, []
        if self.stream is not None:
            text, calls = self.stream.feed(delta.text)
            if delta.finish_reason is not None:
                tail, more, self.parsed = self.stream.finish()
                text, calls = text + tail, calls + more
        # Logprobs ride in response_metadata as langchain-openai puts them (merged chunks
        # concatenate the lists).
        meta = {}
        if delta.logprobs:
            meta = {"logprobs": {"content": chat_logprobs(self.tokenizer, delta.logprobs)}}
        if delta.finish_reason is None:
            if not text and not calls and not meta:
                return []
            message = AIMessageChunk(content=text, tool_call_chunks=calls, response_metadata=meta)
            return [ChatGenerationChunk(message=message)]
        usage = UsageMetadata(
            input_tokens=delta.prompt_tokens,
            output_tokens=delta.completion_tokens,
            total_tokens=delta.prompt_tokens + delta.completion_tokens,
        )
        finish = delta.finish_reason
        if finish == "stop" and self.parsed is not None and self.parsed.tool_calls:
            finish = "tool_calls"
        info = {"finish_reason": finish, "model_name": self.model}
        if delta.stop_sequence:
            info["stop_sequence"] = delta.stop_sequence
        message = AIMessageChunk(
            content=text,
            tool_call_chunks=calls,
            usage_metadata=usage,
            response_metadata={**info, **meta, "model_provider": "chatbot"},
            chunk_position="last",
        )
        return [ChatGenerationChunk(message=message, generation_info=info)]

    def _prompt_logprobs(self, entries: list[Any]) -> AIMessageChunk:
        """`response_metadata["prompt_logprobs"]`: chat logprobs items of the prompt's
        tokens; the first token's logprob is None."""
        first_ids = (self.prompt_ids or [])[:1]
        first = [
            {"token": self.tokenizer.decode(first_ids, skip_special_tokens=False)}
            | {"logprob": None, "bytes": None, "top_logprobs": None}
        ]
        rest = chat_logprobs(self.tokenizer, [e for e in entries[1:] if e is not None])
        meta = {"prompt_logprobs": {"content": (first if first_ids else []) + rest}}
        return AIMessageChunk(content="", response_metadata=meta)

    def result(self, chunks: list[ChatGenerationChunk]) -> ChatResult:
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        msg = merged.message
        content = msg.content
        tool_calls, invalid = [], []
        if self.parsed is not None:  # the strict whole-text parse, with error messages
            content = self.parsed.content
            tool_calls, invalid = self.parsed.tool_calls, self.parsed.invalid_tool_calls
            # Keep the ids streamed to callbacks, so both views name calls the same.
            streamed = [c for c in msg.tool_call_chunks if c.get("id") and c.get("name")]
            for call in tool_calls:
                match = next((c for c in streamed if c["name"] == call["name"]), None)
                if match is not None:
                    call["id"] = match["id"]
                    streamed.remove(match)
        message = AIMessage(
            content=content,
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=msg.usage_metadata,
            response_metadata=msg.response_metadata,
            id=msg.id,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=merged.generation_info)]
        )
