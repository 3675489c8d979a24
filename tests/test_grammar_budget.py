"""The structured-output guarantee, swept: for every max_tokens from the shortest valid
output up, every reply parses (strict JSON: no raw control characters) and validates;
below it, a clear error naming max_tokens. Hostile schemas are refused quickly.

Sweep sizes are kept small for CI; each test prints its "tried / invalid" counts.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

import chatbot
from model_adapters.call_schema import tool_call_tag
from model_adapters.constrained import GuidedConstraint, check_constraint
from model_adapters.schema_checks import SchemaError, check_schema
from model_adapters.tool_parsers import get_parser
from model_adapters.tool_stream import ToolCallStream

USER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city"],
        },
        "nick": {"type": "string"},
        "contact": {
            "anyOf": [
                {"type": "string", "maxLength": 8},
                {
                    "type": "object",
                    "properties": {"phone": {"type": "string"}},
                    "required": ["phone"],
                },
            ]
        },
    },
    "required": ["name", "age", "role", "tags", "address", "contact"],
}
FMT = {"type": "json_schema", "json_schema": {"name": "user", "schema": USER}}


def shortest(name: str, constraint: GuidedConstraint) -> int:
    model = chatbot.get_chat_model(name)
    config = getattr(getattr(model.runtime, "model", None), "config", None)
    return check_constraint(constraint, model.runtime.tokenizer, config)


def sweep(name: str, budgets: list[int], seeds: int, temps: tuple[float, ...]) -> tuple[int, int]:
    tried = invalid = 0
    for max_tokens in budgets:
        for temperature in temps:
            for seed in range(seeds):
                model = chatbot.get_chat_model(
                    name, temperature=temperature, seed=seed, max_tokens=max_tokens
                )
                reply = model.invoke("Give me a user record as JSON.", response_format=FMT)
                tried += 1
                try:
                    jsonschema.validate(json.loads(reply.content), USER)  # strict: no \x00-\x1f
                    assert reply.usage_metadata["output_tokens"] <= max_tokens
                    assert reply.response_metadata["finish_reason"] == "stop"
                except (ValueError, AssertionError, jsonschema.ValidationError):
                    invalid += 1
    print(f"sweep {name}: tried {tried}, invalid {invalid}")
    return tried, invalid


def budgets_from(need: int) -> list[int]:
    return sorted({need, need + 1, need + 4, need + 16, 256})


def test_sweep_tiny_model_every_budget_from_the_minimum():
    need = shortest("tiny", GuidedConstraint("json_schema", USER))
    tried, invalid = sweep("tiny", budgets_from(need), seeds=2, temps=(0.7, 1.5))
    assert tried == 20 and invalid == 0


def test_sweep_real_model_every_budget_from_the_minimum(smol_name):
    need = shortest(smol_name, GuidedConstraint("json_schema", USER))
    tried, invalid = sweep(smol_name, budgets_from(need)[:4], seeds=2, temps=(1.0,))
    assert tried == 8 and invalid == 0


def test_below_the_minimum_is_an_error_naming_max_tokens():
    need = shortest("tiny", GuidedConstraint("json_schema", USER))
    model = chatbot.get_chat_model("tiny", max_tokens=need - 1)
    with pytest.raises(ValueError, match="max_tokens") as info:
        model.invoke("user", response_format=FMT)
    assert info.value.param == "max_tokens"


# --- hostile schemas ------------------------------------------------------------------

SELF = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
CYCLE = {
    "$defs": {
        "a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
        "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]},
    },
    "$ref": "#/$defs/a",
}
OPTIONAL_CYCLE = {  # a linked list: recursive but finite
    "type": "object",
    "properties": {"v": {"type": "integer"}, "next": {"$ref": "#"}},
    "required": ["v"],
}


@pytest.mark.parametrize(
    "schema",
    [
        SELF,
        CYCLE,
        {"type": "integer", "minimum": 5, "maximum": 1},
        {"enum": []},
        {"type": "object", "properties": {"x": False}, "required": ["x"]},
        {"type": "array", "items": SELF, "minItems": 1},
    ],
    ids=["self-ref", "a-b-a", "min>max", "empty-enum", "false-required", "array-of-self"],
)
def test_schemas_without_finite_instances_are_refused(schema):
    with pytest.raises(SchemaError):
        check_schema(schema)
    model = chatbot.get_chat_model("tiny", max_tokens=32)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(ValueError, match="response_format"):
        model.invoke("hi", response_format=fmt)


def test_a_finite_recursive_schema_still_works():
    check_schema(OPTIONAL_CYCLE)
    model = chatbot.get_chat_model("tiny", temperature=1.0, seed=4, max_tokens=40)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": OPTIONAL_CYCLE}}
    reply = model.invoke("list", response_format=fmt)
    jsonschema.validate(json.loads(reply.content), OPTIONAL_CYCLE)


# --- parallel calls and untagged calls --------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_parallel_grammar_accepts_two_calls_and_single_accepts_one(family):
    import xgrammar as xgr

    from model_adapters.constrained import _backend

    model = chatbot.get_chat_model("tiny")
    parser = get_parser(family, tool_names=["get_weather", "add"])
    backend = _backend(model.runtime.tokenizer, model.runtime.model.config)
    one = parser.call_begin("add") + '{"a": 1, "b": 2}' + parser.call_end()
    two = one + parser.separator + parser.call_begin("get_weather") + '{"city": "Oslo"}'
    two += parser.call_end()
    wrap = lambda body: parser.calls_prefix + body + parser.calls_suffix  # noqa: E731
    for parallel, text, ok in [(True, two, True), (False, two, False), (False, one, True)]:
        tag = tool_call_tag(TOOLS, parser, parallel=parallel)
        matcher = xgr.GrammarMatcher(backend.compiler.compile_structural_tag(tag))
        accepted = matcher.accept_string(wrap(text)) and matcher.is_completed()
        assert accepted is ok, (family, parallel)
    parsed = parser.parse(wrap(two))
    assert [c["name"] for c in parsed.tool_calls] == ["add", "get_weather"]


def test_two_forced_calls_parse_with_their_stream_indexes():
    model = chatbot.get_chat_model("tiny", temperature=1.0, max_tokens=200)
    bound = model.bind_tools(TOOLS, tool_choice="required", parallel_tool_calls=True)
    counts = []
    for seed in range(12):  # random weights: a second call is sampled in some seeds
        chunks = list(bound.stream("weather in Oslo and 2+3", seed=seed))
        full = chunks[0]
        for chunk in chunks[1:]:
            full = full + chunk
        assert full.tool_calls and not full.invalid_tool_calls
        indexes = sorted({c["index"] for c in full.tool_call_chunks})
        assert indexes == list(range(len(full.tool_calls)))
        counts.append(len(full.tool_calls))
    assert max(counts) > 1  # several calls in one turn happen
    for single in (
        model.bind_tools(TOOLS, tool_choice="required", parallel_tool_calls=False),
        model.bind_tools(TOOLS, tool_choice="required"),  # ChatLocal's default: one call
    ):
        for seed in range(3):
            assert len(single.invoke("weather", seed=seed).tool_calls) == 1
    print("parallel call counts", counts)


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_untagged_json_calls_are_calls_only_when_they_name_a_tool(family):
    parser = get_parser(family, tool_names=["get_weather", "add"])
    bare = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    listed = '[{"name": "add", "arguments": {"a": 1, "b": 2}}, ' + bare + "]"
    assert [c["name"] for c in parser.parse(bare).tool_calls] == ["get_weather"]
    assert [c["name"] for c in parser.parse(listed).tool_calls] == ["add", "get_weather"]
    answer = '{"name": "Ada", "arguments": "none"}'
    out = parser.parse(answer)
    assert not out.tool_calls and out.content == answer
    stream = ToolCallStream(parser)
    text = "".join(stream.feed(piece)[0] for piece in [answer[:5], answer[5:20], answer[20:]])
    tail, chunks, _ = stream.finish()
    assert text + tail == answer and not chunks
    stream = ToolCallStream(parser)
    got = [c for piece in (listed[:7], listed[7:30], listed[30:]) for c in stream.feed(piece)[1]]
    got += stream.finish()[1]
    assert sorted({c["index"] for c in got}) == [0, 1]
    assert [c["name"] for c in got if c.get("name")] == ["add", "get_weather"]
