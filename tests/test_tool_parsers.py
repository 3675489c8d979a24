"""Tool-call parsers on transcripts in each model family's real output format."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessageChunk

from model_adapters.tool_parsers import PARSERS, detect_parser_name, get_parser
from model_adapters.tool_stream import ToolCallStream

# Real output shapes: Qwen2.5 / Hermes 2 Pro, Llama 3.1, Mistral v3 and v11 tokenizers.
HERMES_TWO = (
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
)
LLAMA_TAGGED = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
LLAMA_BARE_TWO = (
    '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
    '{"name": "get_time", "parameters": {"tz": "UTC"}}'
)
MISTRAL_LIST = (
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "get_time", "arguments": {"tz": "UTC"}, "id": "a1b2c3d4e"}]'
)
MISTRAL_V11 = (
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}'
)


def calls(text: str, parser: str) -> list[tuple[str, dict]]:
    out = get_parser(parser).parse(text)
    assert not out.invalid_tool_calls, out.invalid_tool_calls
    return [(c["name"], c["args"]) for c in out.tool_calls]


def test_hermes_several_calls_and_text_around():
    out = get_parser("hermes").parse(HERMES_TWO + "\nDone.")
    assert [(c["name"], c["args"]) for c in out.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    assert out.content == "Let me check both.\nDone."
    assert len({c["id"] for c in out.tool_calls}) == 2


def test_llama3_tagged_and_bare_calls():
    assert calls(LLAMA_TAGGED, "llama3") == [("get_weather", {"city": "Paris"})]
    assert calls(LLAMA_BARE_TWO, "llama3") == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "UTC"}),
    ]
    plain = get_parser("llama3").parse("The weather in Paris is sunny.")
    assert plain.content == "The weather in Paris is sunny." and not plain.tool_calls


def test_mistral_list_and_v11_forms():
    out = get_parser("mistral").parse("Sure. " + MISTRAL_LIST)
    assert out.content == "Sure."
    assert [(c["name"], c["args"]) for c in out.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "UTC"}),
    ]
    assert out.tool_calls[1]["id"] == "a1b2c3d4e"
    first = out.tool_calls[0]["id"]  # generated in Mistral's required id shape
    assert len(first) == 9 and first.isalnum()
    assert calls(MISTRAL_V11, "mistral") == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "UTC"}),
    ]


def test_arguments_as_json_string_are_decoded():
    text = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
    assert calls(text, "hermes") == [("f", {"x": 1})]


@pytest.mark.parametrize(
    ("parser", "text", "error"),
    [
        ("hermes", '<tool_call>{"name": "f", "arguments": {"x": 1</tool_call>', "bad JSON"),
        ("hermes", '<tool_call>{"name": "f", "argu', "unterminated"),
        ("hermes", '<tool_call>{"arguments": {}}</tool_call>', "no 'name'"),
        ("hermes", '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "not an object"),
        ("llama3", '<|python_tag|>{"name": "f", "parameters": {"x": }', "bad JSON"),
        ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}', "bad JSON"),
    ],
)
def test_malformed_calls_become_invalid_tool_calls(parser, text, error):
    out = get_parser(parser).parse(text)  # never raises
    assert not out.tool_calls
    assert len(out.invalid_tool_calls) == 1
    assert error in out.invalid_tool_calls[0]["error"]


def test_code_in_arguments_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    text = f"<tool_call>__import__('pathlib').Path({str(marker)!r}).touch()</tool_call>"
    out = get_parser("hermes").parse(text)
    assert out.invalid_tool_calls and not marker.exists()


def test_valid_and_malformed_calls_in_one_answer():
    text = HERMES_TWO + '\n<tool_call>{"name": "broken", "arguments": {</tool_call>'
    out = get_parser("hermes").parse(text)
    assert [c["name"] for c in out.tool_calls] == ["get_weather", "get_time"]
    assert len(out.invalid_tool_calls) == 1


def test_detection_from_chat_template_and_registry_names():
    assert detect_parser_name("{{ '<tool_call>' }}") == "hermes"
    assert detect_parser_name("{{ '[TOOL_CALLS]' }}") == "mistral"
    assert detect_parser_name("{{ '<|python_tag|>' }} ipython") == "llama3"
    assert detect_parser_name(None) == "hermes"
    assert {"hermes", "qwen", "llama3", "mistral"} <= set(PARSERS)
    with pytest.raises(ValueError, match="tool_parser"):
        get_parser("nope")


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        ("hermes", HERMES_TWO),
        ("llama3", LLAMA_BARE_TWO),
        ("llama3", LLAMA_TAGGED),
        ("mistral", MISTRAL_LIST),
    ],
)
@pytest.mark.parametrize("step", [1, 4, 17])
def test_streaming_matches_the_whole_text_parse(parser, text, step):
    stream = ToolCallStream(get_parser(parser))
    full = AIMessageChunk(content="")
    pieces = 0
    for i in range(0, len(text), step):
        content, chunks = stream.feed(text[i : i + step])
        pieces += bool(chunks)
        full += AIMessageChunk(content=content, tool_call_chunks=chunks)
    content, chunks, parsed = stream.finish()
    full += AIMessageChunk(content=content, tool_call_chunks=chunks)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [
        (c["name"], c["args"]) for c in parsed.tool_calls
    ]
    assert "<tool_call>" not in full.content and "[TOOL_CALLS]" not in full.content
    if step == 1:
        assert pieces > 4  # arguments arrive in pieces as they are generated
