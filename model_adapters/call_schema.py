"""JSON schemas as handed to xgrammar: plain strings rewritten as patterns.

xgrammar (0.2) gets strings wrong three ways:
- its length-bounded string rule lets raw control characters (U+0000-U+001F) through,
  which JSON forbids: a json_schema reply with `"note": "ab\x14"` did not parse;
- inside a forced tool call, where `excludes` keeps the call markers (`<tool_call>`,
  `[TOOL_CALLS]`, ...) out of argument strings so the parser cannot cut a call short,
  it drops the bounds altogether: `{"city": "a very long name"}` went out as a valid
  call against `maxLength: 10`;
- its string rule (bounded or not), `.` and negated classes also take the UTF-8 bytes of
  surrogates (ED A0..BF ..) and `\ud800` escapes: byte-level and byte-fallback
  vocabularies spell them, and the reply decodes to U+FFFD (three per surrogate, which
  also broke maxLength: a `"note"` of maxLength 12 came back 15 characters long).
Every string without a pattern, format or fixed value of its own is therefore rewritten
as a `pattern` (xgrammar enforces patterns, keeps control characters and unescaped
quotes out of them, and `excludes` does not reach them) over a character class that
lists the allowed characters as ranges of literal characters and leaves out the first
character of every call marker: the JSON parses, is valid UTF-8, and no marker can start
inside. Length-bounded strings take no escapes (each must count as one character);
unbounded ones also take JSON escapes other than of a surrogate (`\"`, `\n`, `\u003c`).
`json_object` is compiled as `free_object_schema()`, so its strings are held the same way.

`tool_call_tag` builds the structural tag that forces tool calls in a parser's format,
with each call's arguments held to these schemas.
"""

from __future__ import annotations

import json
from typing import Any

_LENGTHS = ("minLength", "maxLength")
# A pattern, format or fixed value already says what the string is: left as it is.
_SHAPED = ("pattern", "format", "enum", "const")


def _plain_string(node: dict[str, Any]) -> bool:
    return node.get("type") == "string" and not any(k in node for k in _SHAPED)


# Scalar values JSON strings may hold unescaped: no control characters, no surrogates.
_SPANS = ((0x20, 0xD7FF), (0xE000, 0x10FFFF))


def _literal(char: str) -> str:
    return "\\" + char if char in "\\[]^-" else char


def _char_class(banned: str) -> str:
    """A regex class of the allowed characters, as literal ranges, without `banned`."""
    cuts = sorted({ord(c) for c in banned + '"\\'})
    parts = []
    for low, high in _SPANS:
        for cut in [c for c in cuts if low <= c <= high] + [high + 1]:
            if low < cut:
                first, last = _literal(chr(low)), _literal(chr(cut - 1))
                parts.append(first if low == cut - 1 else f"{first}-{last}")
            low = cut + 1
    return "[" + "".join(parts) + "]"


# A JSON escape, but not of a surrogate (`\ud800` alone is no character).
_ESCAPE = r'\\(["\\/bfnrt]|u([0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))'


def _as_pattern(node: dict[str, Any], banned: str) -> dict[str, Any]:
    low, high = (node.get(k) if isinstance(node.get(k), int) else None for k in _LENGTHS)
    if low is None and high is None:  # not `(class|escape)*`: 1000x slower masks
        chars = _char_class(banned)
        pattern = f"^{chars}*({_ESCAPE}{chars}*)*$"
    else:
        pattern = f"^{_char_class(banned)}{{{low or 0},{'' if high is None else high}}}$"
    rest = {k: v for k, v in node.items() if k not in _LENGTHS}
    return {**rest, "pattern": pattern}


def strings_as_patterns(schema: Any, markers: list[str]) -> Any:
    """A copy of `schema` in which every plain string is a pattern that also keeps out
    the first character of each marker (see the module docstring)."""
    banned = "".join(m[0] for m in markers if m)
    if isinstance(schema, list):
        return [strings_as_patterns(item, markers) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: strings_as_patterns(v, markers) for k, v in schema.items()}
    return _as_pattern(node, banned) if _plain_string(node) else node


def grammar_schema(schema: Any) -> Any:
    """A response_format schema (dict or JSON text) as compiled, the same for our
    matcher and for vLLM's."""
    parsed = json.loads(schema) if isinstance(schema, str) else schema
    return strings_as_patterns(parsed, [])


def free_object_schema() -> dict[str, Any]:
    """`json_object` as a schema: any object, its keys and string values (at any depth)
    held to the same pattern as plain strings (xgrammar's own `{"type": "object"}` uses
    its string rule there, surrogate bytes and all)."""
    text = _as_pattern({"type": "string"}, "")
    value = {"$ref": "#/$defs/value"}
    obj = {"type": "object", "propertyNames": text, "additionalProperties": value}
    scalars = [{"type": t} for t in ("number", "boolean", "null")]
    array = {"type": "array", "items": value}
    return {"$defs": {"value": {"anyOf": [text, *scalars, array, obj]}}, **obj}


def call_content(params: dict[str, Any], markers: list[str]) -> dict[str, Any]:
    """The structural-tag content for one call's arguments."""
    markers = [m for m in markers if m]
    return {
        "type": "json_schema",
        "json_schema": strings_as_patterns(params, markers),
        "max_whitespace_cnt": 1,
        "excludes": markers,
    }


# --- forcing tool calls --------------------------------------------------------------


def tool_call_tag(
    tools: list[dict[str, Any]], parser: Any, parallel: bool = True
) -> dict[str, Any]:
    """A structural tag for one call (or, with `parallel`, one or more) to `tools`, in
    `parser`'s format (ToolCallParser: call_begin/call_end, separator, prefix/suffix)."""
    tags = []
    for tool in tools:
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        tags.append(
            {
                "type": "tag",
                "begin": parser.call_begin(fn["name"]),
                "content": call_content(params, [parser.start, parser.end]),
                "end": parser.call_end(),
            }
        )
    if parallel:
        fmt: dict[str, Any] = {
            "type": "tags_with_separator",
            "tags": tags,
            "separator": parser.separator,
            "at_least_one": True,
            "stop_after_first": False,
        }
    else:
        fmt = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
    prefix, suffix = parser.calls_prefix, parser.calls_suffix
    if prefix or suffix:
        parts = [{"type": "const_string", "value": prefix}] if prefix else []
        parts.append(fmt)
        if suffix:
            parts.append({"type": "const_string", "value": suffix})
        fmt = {"type": "sequence", "elements": parts}
    return {"type": "structural_tag", "format": fmt}
