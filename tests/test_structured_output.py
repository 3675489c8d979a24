"""Structured output on the tiny random models: grammar-forced, so it always parses and
validates; and the capability card, each advertised capability proven."""

from __future__ import annotations

import json
from typing import Annotated

import jsonschema
import pytest
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

import chatbot
from chatbot import factory
from model_adapters.capabilities import model_capabilities
from model_adapters.generation import ContextLengthError
from model_adapters.messages import UnsupportedContentError


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class JokeDict(TypedDict):
    """Joke to tell user."""

    setup: Annotated[str, ..., "question to set up a joke"]
    punchline: Annotated[str, ..., "answer to resolve the joke"]


ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999},
        "status": {"enum": ["new", "paid", "shipped"]},
        "paid": {"type": "boolean"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
            },
        },
    },
    "required": ["id", "status", "paid", "items"],
}


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
@pytest.mark.parametrize(
    "schema", [Joke, JokeDict, Joke.model_json_schema()], ids=["pydantic", "typeddict", "json"]
)
def test_with_structured_output_validates(method, schema):
    model = chatbot.get_chat_model("tiny", max_tokens=48)
    result = model.with_structured_output(schema, method=method).invoke("Tell me a joke about cats")
    if schema is Joke:
        assert isinstance(result, Joke)
    else:
        assert isinstance(result, dict) and set(result) == {"setup", "punchline"}
        assert all(isinstance(v, str) for v in result.values())


def test_include_raw_and_streaming():
    model = chatbot.get_chat_model("tiny", max_tokens=48)
    out = model.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert isinstance(out["parsed"], Joke) and out["parsing_error"] is None
    assert json.loads(out["raw"].content) == out["parsed"].model_dump()
    last = None
    for last in model.with_structured_output(Joke).stream("joke"):
        assert isinstance(last, Joke)
    assert last == out["parsed"]  # greedy: the same answer streamed or not


@pytest.mark.parametrize("max_tokens", [36, 64, 160])
@pytest.mark.parametrize("seed", [1, 2])
def test_response_format_json_schema_always_validates(max_tokens, seed):
    """Sampling from random weights, under a nested schema, with small budgets: the grammar
    closes the JSON before max_tokens, so the answer is always complete and valid."""
    model = chatbot.get_chat_model("tiny", temperature=1.0, seed=seed, max_tokens=max_tokens)
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}
    reply = model.invoke("make an order", response_format=fmt)
    jsonschema.validate(json.loads(reply.content), ORDER)
    assert reply.usage_metadata["output_tokens"] <= max_tokens
    assert reply.response_metadata["finish_reason"] == "stop"


def test_budget_below_the_shortest_answer_is_a_clear_error_naming_max_tokens():
    model = chatbot.get_chat_model("tiny", max_tokens=8)
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}
    with pytest.raises(ValueError, match="max_tokens: 8 is too small") as info:
        model.invoke("make an order", response_format=fmt)
    assert info.value.param == "max_tokens"


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-plain"])
async def test_response_format_json_object_streamed(name):
    model = chatbot.get_chat_model(name, temperature=1.0, seed=3, max_tokens=40)
    text = ""
    async for chunk in model.astream("json please", response_format={"type": "json_object"}):
        text += chunk.content
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}},
            "response_format",
        ),
        ("json", "response_format"),
    ],
)
def test_bad_response_format_is_a_clear_error(fmt, field):
    model = chatbot.get_chat_model("tiny")
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        model.invoke("hi", response_format=fmt)


def test_bad_structured_output_arguments():
    model = chatbot.get_chat_model("tiny")
    with pytest.raises(ValueError, match="method"):
        model.with_structured_output(Joke, method="xml")


# --- capabilities ---------------------------------------------------------------------


def test_capabilities_are_advertised_and_each_one_works():
    model = chatbot.get_chat_model("tiny", max_tokens=48)
    entry = chatbot.get_registry().get("tiny")
    caps = model_capabilities(entry, factory.get_engine("tiny"))
    assert caps.streaming and caps.tools and caps.tool_choice and caps.json_schema
    assert caps.json_object and not caps.vision and not caps.embeddings
    assert caps.tool_parser == "hermes"
    # streaming: many chunks
    assert len(list(model.stream("hello"))) > 3
    # tools + tool_choice: a forced call
    reply = model.bind_tools([Joke], tool_choice="Joke").invoke("joke")
    assert reply.tool_calls[0]["name"] == "Joke"
    Joke.model_validate(reply.tool_calls[0]["args"])
    # json_schema
    assert isinstance(model.with_structured_output(Joke).invoke("joke"), Joke)
    # vision is false: images are refused with a clear error
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(UnsupportedContentError):
        model.invoke([HumanMessage(content=[{"type": "text", "text": "hi"}, image])])
    # context length: the real window of the loaded model
    assert caps.context_length == model.runtime.context_length == 1024
    with pytest.raises(ContextLengthError):
        model.invoke("word " * 1100)


def test_capabilities_of_embeddings_and_unloaded_models():
    registry = chatbot.get_registry()
    assert model_capabilities(registry.get("minilm", "embeddings")).embeddings
    caps = model_capabilities(registry.get("tiny-plain"))  # nothing loaded for the card
    assert caps.tools and caps.json_schema and caps.context_length is None
