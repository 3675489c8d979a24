"""Incremental tool-call parsing: streamed model text -> content + `tool_call_chunks`.

Works for every parser in model_adapters.tool_parsers: content flows until the parser's
start marker, then each JSON call object is streamed as a header chunk (id, name) and
argument fragments whose concatenation is exactly the call's arguments JSON. At the
end, the whole text is parsed once more and any call the stream missed is emitted.
"""

from __future__ import annotations

import json
import re

from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk

from model_adapters.tool_parsers import (
    Llama3Parser,
    ParsedOutput,
    ToolCallParser,
)

_DECODER = json.JSONDecoder()
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
# Untagged JSON: held back until its "name" shows whether it is a call (this many chars).
_BARE_HOLD = 400
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class _CallState:
    """One JSON call object being streamed."""

    def __init__(self, index: int, call_id: str) -> None:
        self.index = index
        self.text = ""
        self.depth = 0
        self.in_str = False
        self.escape = False
        self.id = call_id
        self.header_sent = False
        self.args_start: int | None = None
        self.args_sent = 0

    def add(self, ch: str) -> bool:
        """Add one character; True when the object is complete."""
        self.text += ch
        if self.in_str:
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_str = False
            return False
        if ch == '"':
            self.in_str = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
        return self.depth == 0

    def chunks(self, final: bool) -> list[ToolCallChunk]:
        out: list[ToolCallChunk] = []
        if not self.header_sent:
            name = _NAME.search(self.text)
            if name is None:  # never a call without a name: final parse reports it invalid
                return out
            try:
                decoded = json.loads(f'"{name.group(1)}"')
            except json.JSONDecodeError:
                return out
            out.append(tool_call_chunk(name=decoded, args="", id=self.id, index=self.index))
            self.header_sent = True
        if self.args_start is None:
            found = _ARGS.search(self.text)
            if found is None or found.end() >= len(self.text):
                return out
            self.args_start = found.end()
        value = self.text[self.args_start :]
        if value[:1] in "{[":
            try:
                _, end = _DECODER.raw_decode(value)
                value = value[:end]  # complete: exactly the value, not the wrapper's '}'
            except json.JSONDecodeError:
                if final:
                    value = value.rstrip().removesuffix("}")
        elif not final:
            return out  # strings/numbers: only known once the object is complete
        else:
            try:
                obj = json.loads(self.text)
                args = obj.get("arguments", obj.get("parameters", {}))
                value = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            except (json.JSONDecodeError, AttributeError):
                value = value.rstrip().removesuffix("}")
        piece = value[self.args_sent :]
        if piece:
            out.append(tool_call_chunk(name=None, args=piece, id=None, index=self.index))
            self.args_sent += len(piece)
        return out


class ToolCallStream:
    """Feed streamed text; get back (content to show, tool_call_chunks)."""

    def __init__(self, parser: ToolCallParser) -> None:
        self.parser = parser
        self.raw = ""
        self.in_calls = False
        self.pending = ""  # content held back: may be the start of a marker
        self.call: _CallState | None = None
        self.count = 0
        self.seen_text = False  # llama3: a call must be the first thing in the answer
        self.end_buffer = ""

    def feed(self, text: str) -> tuple[str, list[ToolCallChunk]]:
        self.raw += text
        content: list[str] = []
        chunks: list[ToolCallChunk] = []
        self._consume(text, content, chunks)
        return "".join(content), chunks

    def _consume(self, text: str, content: list[str], chunks: list[ToolCallChunk]) -> None:
        while text:
            if not self.in_calls:
                text = self._content(text, content)
            else:
                text = self._calls(text, chunks)

    def _content(self, text: str, content: list[str]) -> str:
        buf = self.pending + text
        self.pending = ""
        marker = self.parser.start
        at = buf.find(marker)
        if at >= 0:
            content.append(buf[:at])
            self.in_calls = True
            return buf[at + len(marker) :]
        if not self.seen_text and (self.parser.tool_names or isinstance(self.parser, Llama3Parser)):
            verdict = self._bare_verdict(buf)
            if verdict is None:  # not known yet: hold the text back
                self.pending = buf
                return ""
            if verdict:  # an untagged JSON call
                self.in_calls = True
                return buf.lstrip()
        hold = _partial_marker(buf, marker)
        out = buf[: len(buf) - hold]
        self.pending = buf[len(buf) - hold :]
        if out.strip():
            self.seen_text = True
        content.append(out)
        return ""

    def _bare_verdict(self, buf: str) -> bool | None:
        """Does the answer open with an untagged JSON call? None while undecided."""
        stripped = buf.lstrip()
        if not stripped:
            return None
        if stripped[0] not in "{[":
            return False
        names = self.parser.tool_names
        if not names:  # llama3 without known tools: a bare JSON answer is a call
            return True
        found = _NAME.search(stripped)
        if found is not None:
            try:
                return json.loads(f'"{found.group(1)}"') in names
            except json.JSONDecodeError:
                return False
        return None if len(stripped) < _BARE_HOLD else False

    def _calls(self, text: str, chunks: list[ToolCallChunk]) -> str:
        end = self.parser.end
        if end:
            buf = self.end_buffer + text
            self.end_buffer = ""
            at = buf.find(end)
            if at >= 0:
                self._scan(buf[:at], chunks)
                self._close_call(chunks)
                self.in_calls = False
                return buf[at + len(end) :]
            hold = _partial_marker(buf, end)
            self.end_buffer = buf[len(buf) - hold :]
            text = buf[: len(buf) - hold]
        self._scan(text, chunks)
        return ""

    def _scan(self, text: str, chunks: list[ToolCallChunk]) -> None:
        for ch in text:
            if self.call is None:
                if ch != "{":
                    continue  # separators between calls: '[', ',', ';', whitespace
                self.call = _CallState(self.count, self.parser.new_id())
                self.count += 1
            if self.call.add(ch):
                self._close_call(chunks)
        if self.call is not None:
            chunks.extend(self.call.chunks(final=False))

    def _close_call(self, chunks: list[ToolCallChunk]) -> None:
        if self.call is not None:
            chunks.extend(self.call.chunks(final=True))
            self.call = None

    def finish(self) -> tuple[str, list[ToolCallChunk], ParsedOutput]:
        """Flush held text; emit calls the stream missed. Returns the full parse too."""
        content, chunks = self.pending, []
        self.pending = ""
        if self.in_calls:
            self._scan(self.end_buffer, chunks)
            self._close_call(chunks)
        parsed = self.parser.parse(self.raw)
        for call in parsed.tool_calls[self.count :]:  # invalid ones are never streamed as calls
            args = call.get("args")
            text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            chunks.append(
                tool_call_chunk(
                    name=call.get("name"), args=text, id=call.get("id"), index=self.count
                )
            )
            self.count += 1
        return content, chunks, parsed
