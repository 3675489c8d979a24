"""The structured-output sweep over /v1 with the official openai client (tiny and real
model), `ChatLocal.with_structured_output` in its three methods, instructor, and the
length-bounded strings of forced tool calls. Each sweep prints its cases/invalid counts;
bench/structured_sweep.py runs a larger one. Cases: tests/structured_cases.py."""

from __future__ import annotations

import functools

import pytest
import xgrammar as xgr
from openai import BadRequestError, OpenAI
from pydantic import BaseModel, Field

import chatbot
from model_adapters.call_schema import tool_call_tag
from model_adapters.constrained import GuidedConstraint, _backend
from model_adapters.tool_parsers import get_parser
from tests.extra_models import extra_models
from tests.structured_cases import (
    MODES,
    SAMPLED,
    SCHEMAS,
    Tally,
    budgets,
    ci_budgets,
    local_sweep,
    openai_case,
    short_budgets,
    shortest,
    tool_for,
)

# --- length bounds inside forced calls (xgrammar's `excludes` drops them) ---------------

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 3, "maxLength": 10}},
    "required": ["city"],
}


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
@pytest.mark.parametrize("parallel", [False, True])
def test_forced_call_grammar_keeps_string_length_bounds_and_excludes_markers(family, parallel):
    model = chatbot.get_chat_model("tiny")
    backend = _backend(model.runtime.tokenizer, model.runtime.model.config)
    parser = get_parser(family, tool_names=["record"])
    compiled = backend.compiler.compile_structural_tag(
        tool_call_tag([tool_for(CITY)], parser, parallel=parallel)
    )

    def accepts(city: str | bytes) -> bool:
        city = city.encode() if isinstance(city, str) else city
        head = parser.calls_prefix + parser.call_begin("record") + '{"city": "'
        tail = '"}' + parser.call_end() + parser.calls_suffix
        matcher = xgr.GrammarMatcher(compiled)
        return matcher.accept_string(head.encode() + city + tail.encode()) and (
            matcher.is_completed()
        )

    assert accepts("Oslo") and accepts("abc") and accepts("abcdefghij")
    assert accepts("Zürich 東京") and accepts("a😀b")
    # UTF-8 of a surrogate / an overlong form: decoded, three U+FFFD each (too long)
    assert not accepts(b"ab\xed\xa0\x80") and not accepts(b"ab\xe0\x80\x80")
    assert not accepts("ab")  # minLength 3
    assert not accepts("abcdefghijk")  # maxLength 10
    for marker in (parser.start, parser.end):
        if marker:  # a call marker inside an argument would cut the call short
            assert not accepts(("a" + marker)[:10])


def test_length_bounded_strings_keep_json_strict_in_response_format():
    """xgrammar's own maxLength rule let raw control characters through (the tiny model's
    sweep found `"note": "xt84beforeZ\x14"`): bounded strings are compiled as patterns."""
    model = chatbot.get_chat_model("tiny")
    backend = _backend(model.runtime.tokenizer, model.runtime.model.config)
    schema = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 12}}}
    compiled = backend.compile(GuidedConstraint("json_schema", schema))

    def accepts(text: str | bytes) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return matcher.accept_string(text) and matcher.is_completed()

    assert accepts('{"note": "ab"}') and accepts('{"note": "abcdefghijkl"}')
    assert not accepts('{"note": "ab\x14"}') and not accepts('{"note": "abcdefghijklm"}')
    assert not accepts(b'{"note": "ab\xed\xa0\x80"}')  # a surrogate's UTF-8
    assert accepts('{"note": "Zürich 東京"}')


# --- a SentencePiece-style vocabulary (byte fallback) -----------------------------------


def test_sweep_with_a_sentencepiece_vocabulary(tiny_sp_dir, models_root) -> None:
    """Control characters are `<0xNN>` tokens here, not byte-level symbols: the grammar
    must still keep them out of JSON strings."""
    entry = {"path": "tiny-sp", "options": {"dtype": "float32"}}
    with extra_models({"tiny-sp": entry}, models_root):
        chat = chatbot.get_chat_model("tiny-sp")
        info = xgr.TokenizerInfo.from_huggingface(chat.runtime.tokenizer)
        assert info.vocab_type == xgr.VocabType.BYTE_FALLBACK
        tally, refused = local_sweep(chat, "local/tiny-sp", SAMPLED, short_budgets)
    print(tally.report())
    assert tally.cases == len(MODES) * len(SCHEMAS) * 2 * 2 and tally.invalid == 0, tally.report()
    assert refused == len(MODES) * len(SCHEMAS)


# --- /v1 with the official openai client -------------------------------------------------


def v1_sweep(client: OpenAI, name: str, gens: list[dict], points: int | None) -> Tally:
    """`points` max_tokens per schema up to 256, or None for ci_budgets without the
    middle point (the real model's sweeps in process cover it: test_grammar_budget)."""
    chat = chatbot.get_chat_model(name)  # the same engine the server uses: its shortest
    tally, cases = Tally(f"v1/{name}"), {}
    for mode in MODES:
        for schema_name, schema in SCHEMAS.items():
            need = shortest(chat, schema, mode)
            with pytest.raises(BadRequestError, match="max_tokens"):
                openai_case(client, name, schema, mode, need - 1)
            picks = (
                ci_budgets(schema_name, need, mid=False)
                if points is None
                else budgets(need, points=points)
            )
            for max_tokens in picks:
                for gen in gens:
                    label = f"{mode}/{schema_name}@{max_tokens}/{gen}"
                    cases[label] = functools.partial(
                        openai_case, client, name, schema, mode, max_tokens, **gen
                    )
    tally.run(cases)
    print(tally.report())
    return tally


def test_v1_sweep_tiny_model_seeds_and_temperatures(client: OpenAI) -> None:
    gens = [{"seed": 0, "temperature": 0.8}, {"seed": 1, "temperature": 1.5}]
    tally = v1_sweep(client, "tiny", gens, points=3)
    assert tally.cases == len(MODES) * len(SCHEMAS) * 3 * 2 and tally.invalid == 0, tally.report()


@pytest.mark.real_model
def test_v1_sweep_real_model_greedy(client: OpenAI, smol_name) -> None:
    tally = v1_sweep(client, smol_name, [{"temperature": 0}], points=None)
    assert tally.cases == len(MODES) * (len(SCHEMAS) + 2) and tally.invalid == 0, tally.report()


# --- with_structured_output and instructor on the real model ----------------------------


class Person(BaseModel):
    name: str = Field(min_length=2, max_length=20)
    age: int = Field(ge=0, le=120)
    city: str | None = None


class Adult(BaseModel):
    name: str = Field(min_length=2, max_length=20)
    age: int = Field(ge=18, le=120)


PEOPLE = [{"role": "user", "content": "Alice is 31 and lives in Paris. Extract the person."}]


@pytest.mark.real_model
@pytest.mark.parametrize("method", ["function_calling", "json_mode", "json_schema"])
def test_with_structured_output_every_method_on_the_real_model(smol, method) -> None:
    out = smol.with_structured_output(Person, method=method, include_raw=True).invoke(
        PEOPLE[0]["content"], max_tokens=60
    )
    assert out["parsing_error"] is None and isinstance(out["parsed"], Person)
    assert out["raw"].usage_metadata["output_tokens"] <= 60


@pytest.mark.real_model
@pytest.mark.parametrize("mode", ["TOOLS", "JSON", "JSON_SCHEMA"])
def test_instructor_on_the_real_model_at_60_tokens(client: OpenAI, smol_name, mode) -> None:
    instructor = pytest.importorskip("instructor")
    """TOOLS and JSON_SCHEMA are held to the schema by the grammar; JSON sends only
    `json_object` (the schema is in instructor's system prompt), so there the model must
    follow the prompt: the 135M model does for a flat object, not with an optional field."""
    patched = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    person, completion = patched.chat.completions.create_with_completion(
        model=smol_name,
        messages=PEOPLE,
        response_model=Adult,
        max_tokens=60,
        temperature=0,
        max_retries=0,  # the first answer must be valid: no re-asking
    )
    assert isinstance(person, Adult)  # instructor validated it with pydantic
    assert completion.usage.completion_tokens <= 60
