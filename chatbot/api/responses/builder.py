"""Chat model output -> the Responses API: `ResponseBuilder` turns AIMessageChunks into
the documented stream events and the response object (a non-streamed answer is one
chunk through the same builder)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from langchain_core.messages import AIMessageChunk

from chatbot.api.openai.convert import content_text, finish_reason, raw_finish_reason
from chatbot.api.responses.protocol import ResponsesRequest


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _delta_logprobs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat logprobs -> the stream events' ResponseLogProb (no bytes)."""
    return [
        {
            "token": i["token"],
            "logprob": i["logprob"],
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"]} for t in i.get("top_logprobs", [])
            ],
        }
        for i in items
    ]


class ResponseBuilder:
    """Builds one response from the chat model's chunks, item by item, with the stream
    events in the documented order (created, in_progress, output_item.added,
    content_part.added, output_text.delta..., ..., completed)."""

    def __init__(self, body: ResponsesRequest, name: str) -> None:
        self.body = body
        self.name = name
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.seq = 0
        self._text: dict[str, Any] | None = None  # the open message item
        self._call: dict[str, Any] | None = None  # the open function_call item
        self._calls: dict[int, dict[str, Any]] = {}  # by tool-call chunk index
        self._tokens = [0, 0]
        self._raw_finish: str | None = None
        self.status = "in_progress"

    # --- the response object -------------------------------------------------------

    def response(self) -> dict[str, Any]:
        body = self.body
        done = self.status != "in_progress"
        fmt = body.text.format if body.text and body.text.format else None
        usage = None
        if done:
            prompt, completion = self._tokens
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": int(time.time()) if done else None,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if self.status == "incomplete" else None
            ),
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.name,
            "output": self.output if done else [],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": body.store is not False,
            "temperature": body.temperature,
            "text": {
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"}
            },
            "tool_choice": body.tool_choice or "auto",
            "tools": [
                {"type": "function", "strict": t.get("strict"), "parameters": None, **t}
                for t in body.tools or []
            ],
            "top_logprobs": body.top_logprobs,
            "top_p": body.top_p,
            "truncation": "disabled",
            **({"usage": usage} if usage else {}),  # the spec has no null usage
            "metadata": body.metadata or {},
            **({"user": body.user} if body.user else {}),
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    # --- items -------------------------------------------------------------------

    def _open_text(self) -> list[dict[str, Any]]:
        item = {"id": _id("msg"), "type": "message", "role": "assistant", "status": "in_progress"}
        self._text = {**item, "content": []}
        self.output.append(self._text)
        index = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._text["content"].append(part)
        return [
            self._event(
                "response.output_item.added", output_index=index, item={**item, "content": []}
            ),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=dict(part, logprobs=[]),
            ),
        ]

    def _close_text(self, status: str = "completed") -> list[dict[str, Any]]:
        item, self._text = self._text, None
        if item is None:
            return []
        index = self.output.index(item)
        part = item["content"][0]
        item["status"] = status
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=_delta_logprobs(part["logprobs"]),
            ),
            self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _close_call(self) -> list[dict[str, Any]]:
        item, self._call = self._call, None
        if item is None:
            return []
        index = self.output.index(item)
        item["status"] = "completed"
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def feed(self, chunk: AIMessageChunk) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        usage = chunk.usage_metadata or {}
        self._tokens[0] += int(usage.get("input_tokens") or 0)
        self._tokens[1] += int(usage.get("output_tokens") or 0)
        self._raw_finish = raw_finish_reason(chunk) or self._raw_finish
        text = content_text(chunk.content)
        logprobs = (chunk.response_metadata.get("logprobs") or {}).get("content") or []
        if text or logprobs:
            if self._text is None:
                events += self._close_call()
                events += self._open_text()
            part = self._text["content"][0]  # type: ignore[index]
            part["text"] += text
            part["logprobs"] += logprobs
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self._text["id"],  # type: ignore[index]
                    output_index=len(self.output) - 1,
                    content_index=0,
                    delta=text,
                    logprobs=_delta_logprobs(logprobs),
                )
            )
        for position, tc in enumerate(chunk.tool_call_chunks):
            index = tc.get("index")
            index = index if isinstance(index, int) else position
            item = self._calls.get(index)
            if item is None:
                events += self._close_text()
                events += self._close_call()
                item = {
                    "id": _id("fc"),
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": tc.get("id") or _id("call"),
                    "name": tc.get("name") or "",
                    "arguments": "",
                }
                self._calls[index] = self._call = item
                self.output.append(item)
                events.append(
                    self._event(
                        "response.output_item.added",
                        output_index=len(self.output) - 1,
                        item=dict(item),
                    )
                )
            args = tc.get("args") or ""
            if args:
                item["arguments"] += args
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=self.output.index(item),
                        delta=args,
                    )
                )
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close the open items; the last event carries the whole response."""
        reason = finish_reason(self._raw_finish, bool(self._calls))
        self.status = "incomplete" if reason == "length" else "completed"
        events = self._close_text("incomplete" if reason == "length" else "completed")
        events += self._close_call()
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def error_event(self, code: str | None, message: str, param: str | None) -> dict[str, Any]:
        return self._event("error", code=code, message=message, param=param)
