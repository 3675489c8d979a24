"""Deterministic scripted chat models for chain tests (where the answer's content matters)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from chatbot.engines import Engine


class RecordingModel(BaseChatModel):
    """Answers 'reply N to: <last user text>' and records every message list it was given."""

    received: list[list[BaseMessage]] = Field(default_factory=list)
    max_tokens: int = 16

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.received.append(list(messages))
        last = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        reply = AIMessage(f"reply {len(self.received)} to: {last.text}")
        return ChatResult(generations=[ChatGeneration(message=reply)])


class ScriptedToolModel(BaseChatModel):
    """First turn: calls `tool_name` with `tool_args`. Once a tool result is in the
    conversation: answers 'The tool says: <result>' - so the answer proves it was used."""

    tool_name: str
    tool_args: dict[str, Any]
    bound_tools: list[str] = Field(default_factory=list)
    received: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-tools"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedToolModel:
        self.bound_tools = [getattr(t, "name", None) or getattr(t, "__name__", "") for t in tools]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.received.append(list(messages))
        if isinstance(messages[-1], ToolMessage):
            reply = AIMessage(f"The tool says: {messages[-1].text}")
        else:
            call = {
                "name": self.tool_name,
                "args": self.tool_args,
                "id": "call_1",
                "type": "tool_call",
            }
            reply = AIMessage("", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=reply)])


class ScriptedToolEngine(Engine):
    """A registry engine serving a ScriptedToolModel, so that a server's catalog hands it
    out like any model: `{"provider": "tests.chains_fakes:ScriptedToolEngine", "model":
    "scripted", "params": {"tool_name": ..., "tool_args": {...}}}`."""

    name = "scripted-tools"
    needs_path = False

    def chat_model(self, **overrides: Any) -> BaseChatModel:
        params = self.entry.params
        return ScriptedToolModel(tool_name=params["tool_name"], tool_args=params["tool_args"])


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh settings.data_dir (knowledge bases, chat history) for one test."""
    from chatbot.settings import get_settings

    path = tmp_path / "data"
    monkeypatch.setenv("CHATBOT_DATA_DIR", str(path))
    get_settings.cache_clear()
    yield path
    monkeypatch.undo()
    get_settings.cache_clear()


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A minimal real PDF (Helvetica text, one line per string) - no PDF writer needed."""
    objects: list[bytes] = []
    n = len(pages)
    font = 3 + 2 * n
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    for i, lines in enumerate(pages):
        text = " T* ".join(f"({line})Tj" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {text} ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))
    return path
