"""Strings without a length bound stay valid UTF-8 (issue 13).

xgrammar's own JSON string rule takes the UTF-8 bytes of a surrogate (ED A0..BF ..) and
`\\ud800` escapes: a byte-level or byte-fallback vocabulary then spells a string that
decodes to U+FFFD (or a lone surrogate after json.loads). Unbounded strings are compiled
as patterns over explicit character ranges (model_adapters.call_schema), like the
length-bounded ones. Sampled at temperature 1 with a bias toward those bytes (a model
that likes them), every reply parses, validates and holds no U+FFFD, on a byte-level BPE
and a SentencePiece-style vocabulary, as a json_schema reply and as a forced call (and
through vLLM's own grammar: tests/test_vllm_cpu.py).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import xgrammar as xgr

import chatbot
from model_adapters.constrained import GuidedConstraint, _backend
from tests.extra_models import extra_models
from tests.structured_cases import PROMPT, TOOL, response_format, tool_for

FREE = {
    "type": "object",
    "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
    "required": ["a", "b"],
}
OBJECT = ({"type": "json_object"}, {"type": "object"})
SEEDS = range(4)
SURROGATE_BYTES = [0xED, *range(0xA0, 0xC0)]  # a surrogate's UTF-8: ED A0..BF 80..BF


def _backend_of(chat):
    runtime = chat.runtime  # transformers or vLLM (whose runtime has no `model`)
    return _backend(runtime.tokenizer, getattr(getattr(runtime, "model", None), "config", None))


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _problem(text: str | None, data, schema=FREE) -> str | None:
    """Why a reply is not clean: U+FFFD in the text, a lone surrogate, invalid JSON."""
    if text is not None and "\ufffd" in text:
        return f"U+FFFD in {text!r}"
    try:
        jsonschema.validate(data, schema)
        for s in _strings(data):
            s.encode("utf-8")
            if "\ufffd" in s:
                return f"U+FFFD in {s!r}"
    except (jsonschema.ValidationError, UnicodeEncodeError) as exc:
        return f"{type(exc).__name__} in {text!r}"
    return None


def utf8_sweep(chat) -> list[str]:
    """Seeded temperature-1 replies, biased toward the bytes of a surrogate."""
    by_bytes = _backend_of(chat).by_bytes
    ids = [by_bytes[bytes([b])] for b in SURROGATE_BYTES if bytes([b]) in by_bytes]
    assert len(ids) == len(SURROGATE_BYTES)  # every byte has its own token here
    gen = {"temperature": 1.0, "max_tokens": 48, "logit_bias": {str(i): 6 for i in ids}}
    bad = []
    formats = {"json_schema": (response_format(FREE), FREE), "json_object": OBJECT}
    for seed in SEEDS:
        for kind, (fmt, schema) in formats.items():  # json_object: keys, nested values
            reply = chat.invoke(PROMPT, response_format=fmt, seed=seed, **gen)
            try:
                data = json.loads(reply.content)
            except ValueError:
                data = None
            problem = _problem(reply.content, data, schema)
            bad += [f"{kind}/{seed}: {problem}"] if problem else []
        bound = chat.bind_tools([tool_for(FREE)], tool_choice=TOOL)
        call = bound.invoke(PROMPT, seed=seed, **gen)
        if len(call.tool_calls) != 1 or call.invalid_tool_calls:
            bad.append(f"tool/{seed}: calls {call.tool_calls} {call.invalid_tool_calls}")
            continue
        args = call.tool_calls[0]["args"]
        problem = _problem(None, args)
        bad += [f"tool/{seed}: {problem}"] if problem else []
    return bad


def test_unbounded_strings_stay_utf8_byte_level() -> None:
    bad = utf8_sweep(chatbot.get_chat_model("tiny"))
    assert not bad, "\n".join(bad)


def test_unbounded_strings_stay_utf8_sentencepiece(tiny_sp_dir, models_root) -> None:
    entry = {"path": "tiny-sp", "options": {"dtype": "float32"}}
    with extra_models({"tiny-sp": entry}, models_root):
        bad = utf8_sweep(chatbot.get_chat_model("tiny-sp"))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("kind", ["json_schema", "json_object", "structural_tag"])
def test_unbounded_string_grammar_takes_escapes_and_no_surrogates(kind) -> None:
    """Escapes still work in free text; surrogates, in bytes or escaped, do not."""
    chat = chatbot.get_chat_model("tiny")
    backend = _backend_of(chat)
    if kind != "structural_tag":
        compiled, head, tail = backend.compile(GuidedConstraint(kind, FREE)), "", ""
    else:
        from model_adapters.call_schema import tool_call_tag
        from model_adapters.tool_parsers import get_parser

        parser = get_parser("hermes", tool_names=[TOOL])
        compiled = backend.compiler.compile_structural_tag(
            tool_call_tag([tool_for(FREE)], parser, parallel=False)
        )
        head = parser.calls_prefix + parser.call_begin(TOOL)
        tail = parser.call_end() + parser.calls_suffix

    def accepts(a: bytes) -> bool:
        text = head.encode() + b'{"a": "' + a + b'", "b": ""}' + tail.encode()
        matcher = xgr.GrammarMatcher(compiled)
        return matcher.accept_string(text) and matcher.is_completed()

    assert accepts(b"plain") and accepts("Zürich 東京 😀 한".encode())
    assert accepts(b'say \\"hi\\"\\n\\t\\\\ \\/ \\u00e9 \\uE000 \\uD7FF')
    assert not accepts(b"ab\xed\xa0\x80") and not accepts(b"ab\xed\xbf\xbf")
    assert not accepts(b"\\ud800") and not accepts(b"\\uDFFF") and not accepts(b"a\x14")


def test_json_object_keys_and_nested_strings_have_no_surrogates() -> None:
    """json_object's free-form parts: keys and strings at any depth (the bug: xgrammar's
    own `{"type": "object"}` grammar took surrogate bytes in all of them)."""
    compiled = _backend_of(chatbot.get_chat_model("tiny")).compile(
        GuidedConstraint("json_object", None)
    )

    def accepts(text: bytes) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return matcher.accept_string(text) and matcher.is_completed()

    assert accepts(b"{}") and accepts('{"\u00e9 k": [1, {"x": null}], "b": "Zürich"}'.encode())
    for bad in (b'{"k\xed\xa0\x80": 1}', b'{"a": ["\xed\xa0\x80"]}', b'{"a": {"\\ud800": 1}}'):
        assert not accepts(bad), bad
