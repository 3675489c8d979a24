"""Tool-call parsers: model text -> LangChain tool calls, whole or streamed.

One parser per output format (hermes/qwen `<tool_call>`, llama3 JSON, mistral
`[TOOL_CALLS]`), chosen per model by the registry field `tool_parser` or detected from
the chat template. Parsing never raises and never evaluates code: text that looks like
a call but does not decode becomes an `invalid_tool_call` carrying the error.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from langchain_core.messages.tool import (
    InvalidToolCall,
    ToolCall,
    invalid_tool_call,
    tool_call,
)

_DECODER = json.JSONDecoder()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedOutput:
    """Model text split into plain content and tool calls."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def call_from_json(raw: str, obj: Any = None) -> ToolCall | InvalidToolCall:
    """One decoded call object -> a ToolCall, or an InvalidToolCall naming the problem."""
    if obj is None:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            return invalid_tool_call(
                name=None, args=raw, id=new_call_id(), error=f"bad JSON: {exc}"
            )
    if not isinstance(obj, dict):
        return invalid_tool_call(
            name=None, args=raw, id=new_call_id(), error="call is not an object"
        )
    name = obj.get("name")
    args: Any = obj.get("arguments", obj.get("parameters", {}))
    call_id = obj.get("id") if isinstance(obj.get("id"), str) else new_call_id()
    if isinstance(args, str):  # some models send arguments as a JSON string, like OpenAI
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return invalid_tool_call(
                name=name, args=args, id=call_id, error=f"bad arguments: {exc}"
            )
    if not isinstance(name, str) or not name:
        return invalid_tool_call(name=None, args=raw, id=call_id, error="call has no 'name'")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return invalid_tool_call(
            name=name, args=json.dumps(args), id=call_id, error="arguments are not an object"
        )
    return tool_call(name=name, args=args, id=call_id)


def _add(out: ParsedOutput, call: ToolCall | InvalidToolCall) -> None:
    if call.get("type") == "invalid_tool_call":
        out.invalid_tool_calls.append(call)  # type: ignore[arg-type]
    else:
        out.tool_calls.append(call)  # type: ignore[arg-type]


def split_json_objects(text: str) -> tuple[list[tuple[str, Any]], str]:
    """Decode consecutive JSON values separated by whitespace, ';' or ','.

    Returns (raw text and value of each, the undecodable rest)."""
    found: list[tuple[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n;,":
            pos += 1
        if pos >= len(text):
            return found, ""
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return found, text[pos:]
        found.append((text[pos:end], value))
        pos = end


def _unwrap(obj: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-shaped {"type": "function", "function": {...}} -> the inner call object."""
    inner = obj.get("function")
    return inner if isinstance(inner, dict) and "name" in inner else obj


def _names_tool(obj: Any, names: set[str]) -> bool:
    return isinstance(obj, dict) and _unwrap(obj).get("name") in names


class ToolCallParser:
    """Base: a call region starts at `start` and ends at `end` (or the end of the text)."""

    name: ClassVar[str] = ""
    start: ClassVar[str] = ""
    end: ClassVar[str | None] = None
    # Forcing several calls: prefix, calls joined by separator, suffix.
    separator: ClassVar[str] = "\n"
    calls_prefix: ClassVar[str] = ""
    calls_suffix: ClassVar[str] = ""

    def __init__(self, tool_names: list[str] | None = None) -> None:
        # Offered tools: an untagged JSON call naming one of them is a call too.
        self.tool_names = set(tool_names or [])

    def parse(self, text: str) -> ParsedOutput:
        raise NotImplementedError

    def bare_calls(self, text: str) -> ParsedOutput | None:
        """Untagged calls: the whole answer is a JSON object (or list of them, or several
        separated by ';'/',') each naming an offered tool. None if it is not that."""
        if not self.tool_names or text.lstrip()[:1] not in ("{", "["):
            return None
        values, rest = split_json_objects(text.strip())
        if rest.strip() or not values:
            return None
        objects = [
            v for _, value in values for v in (value if isinstance(value, list) else [value])
        ]
        if not objects or not all(_names_tool(o, self.tool_names) for o in objects):
            return None
        out = ParsedOutput(content="")
        for obj in objects:
            _add(out, call_from_json(json.dumps(obj), _unwrap(obj)))
        return out

    def new_id(self) -> str:
        return new_call_id()

    # Used by constrained decoding to force a call in this format.
    def call_begin(self, tool_name: str) -> str:
        raise NotImplementedError

    def call_end(self) -> str:
        raise NotImplementedError


class HermesParser(ToolCallParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen 2/2.5/3)."""

    name = "hermes"
    start = "<tool_call>"
    end = "</tool_call>"
    _CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> ParsedOutput:
        if self.start not in text:
            bare = self.bare_calls(text)
            if bare is not None:
                return bare
        out = ParsedOutput(content="")
        pieces = []
        last = 0
        for match in self._CALL.finditer(text):
            pieces.append(text[last : match.start()])
            last = match.end()
            body = match.group(1).strip()
            if not match.group(0).endswith(self.end):
                _add(
                    out,
                    invalid_tool_call(
                        name=None, args=body, id=new_call_id(), error="unterminated <tool_call>"
                    ),
                )
                continue
            _add(out, call_from_json(body))
        pieces.append(text[last:])
        out.content = "\n".join(p.strip() for p in pieces if p.strip())
        return out

    def call_begin(self, tool_name: str) -> str:
        return f'<tool_call>\n{{"name": "{tool_name}", "arguments": '

    def call_end(self) -> str:
        return "}\n</tool_call>"


class Llama3Parser(ToolCallParser):
    """Llama 3.x JSON calls: the answer is `{"name": ..., "parameters": {...}}` (several
    separated by ';'), optionally after `<|python_tag|>`."""

    name = "llama3"
    start = "<|python_tag|>"
    separator = "; "
    _LOOKS_LIKE_CALL = re.compile(r'^\s*\[?\s*\{\s*"(name|type)"')

    def parse(self, text: str) -> ParsedOutput:
        body = text
        tagged = self.start in text
        prefix = ""
        if tagged:
            prefix, _, body = text.partition(self.start)
        if not tagged and not self._LOOKS_LIKE_CALL.match(body):
            return ParsedOutput(content=text.strip())
        if not tagged and self.tool_names:  # tools known: JSON naming none is an answer
            bare = self.bare_calls(text)
            if bare is not None:
                return bare
            values, rest = split_json_objects(body.strip())
            if values and not rest.strip():
                return ParsedOutput(content=text.strip())
        out = ParsedOutput(content=prefix.strip())
        values, rest = split_json_objects(body.strip())
        objects: list[tuple[str, Any]] = []
        for raw, value in values:
            if isinstance(value, list):  # a JSON array of calls
                objects.extend((json.dumps(v), v) for v in value)
            else:
                objects.append((raw, value))
        for raw, value in objects:
            _add(out, call_from_json(raw, value))
        if rest.strip():
            error = "text after the calls is not JSON" if objects else "bad JSON"
            if objects or tagged or self._LOOKS_LIKE_CALL.match(rest):
                _add(out, invalid_tool_call(name=None, args=rest, id=new_call_id(), error=error))
            else:
                out.content = (out.content + "\n" + rest).strip()
        return out

    def call_begin(self, tool_name: str) -> str:
        return f'{{"name": "{tool_name}", "parameters": '

    def call_end(self) -> str:
        return "}"


class MistralParser(ToolCallParser):
    """`[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or the v11+ form
    `[TOOL_CALLS]name[ARGS]{...}`."""

    name = "mistral"
    start = "[TOOL_CALLS]"
    separator = ", "
    calls_prefix = "[TOOL_CALLS]["
    calls_suffix = "]"
    _NAMED = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9]+)\s*)?\[ARGS\]")

    def parse(self, text: str) -> ParsedOutput:
        content, found, rest = text.partition(self.start)
        out = ParsedOutput(content=content.strip())
        if not found:
            bare = self.bare_calls(text)
            return out if bare is None else self._mistral_ids(bare)
        for segment in rest.split(self.start):
            self._parse_segment(segment, out)
        return self._mistral_ids(out)

    def _mistral_ids(self, out: ParsedOutput) -> ParsedOutput:
        for call in [*out.tool_calls, *out.invalid_tool_calls]:
            if str(call.get("id") or "").startswith("call_"):
                call["id"] = self.new_id()
        return out

    def new_id(self) -> str:
        return uuid.uuid4().hex[:9]  # Mistral templates require 9 alphanumeric characters

    def _parse_segment(self, segment: str, out: ParsedOutput) -> None:
        named = self._NAMED.match(segment)
        if named:
            name, call_id, body = named.group(1), named.group(2), segment[named.end() :]
            values, tail = split_json_objects(body)
            if not values:
                _add(
                    out, invalid_tool_call(name=name, args=body, id=new_call_id(), error="bad JSON")
                )
                return
            raw, value = values[0]
            obj = {"name": name, "arguments": value, **({"id": call_id} if call_id else {})}
            _add(out, call_from_json(raw, obj))
            return
        values, tail = split_json_objects(segment)
        if not values:
            _add(
                out, invalid_tool_call(name=None, args=segment, id=new_call_id(), error="bad JSON")
            )
            return
        for _raw, value in values:
            for item in value if isinstance(value, list) else [value]:
                _add(out, call_from_json(json.dumps(item), item))
        if tail.strip():
            _add(out, invalid_tool_call(name=None, args=tail, id=new_call_id(), error="bad JSON"))

    def call_begin(self, tool_name: str) -> str:
        return f'{{"name": "{tool_name}", "arguments": '

    def call_end(self) -> str:
        return "}"


PARSERS: dict[str, type[ToolCallParser]] = {
    "hermes": HermesParser,
    "qwen": HermesParser,
    "llama3": Llama3Parser,
    "llama": Llama3Parser,
    "mistral": MistralParser,
}


def detect_parser_name(chat_template: Any) -> str:
    """Guess the call format from the chat template text; hermes when unsure (it is also
    the format we describe in the system prompt for templates without tools)."""
    template = chat_template or ""
    if isinstance(template, dict):
        template = " ".join(str(v) for v in template.values())
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3"
    return "hermes"


def get_parser(
    name: str = "auto", tokenizer: Any = None, tool_names: list[str] | None = None
) -> ToolCallParser:
    """The parser registered as `name`, or the one detected from the tokenizer's template.
    `tool_names`: the offered tools, so untagged JSON calls naming one are recognised."""
    if name == "auto":
        name = detect_parser_name(getattr(tokenizer, "chat_template", None))
    try:
        return PARSERS[name](tool_names)
    except KeyError:
        raise ValueError(
            f"tool_parser: unknown parser {name!r} (known: {sorted(PARSERS)}, auto)"
        ) from None
