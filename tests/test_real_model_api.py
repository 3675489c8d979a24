"""Structured output and forced tool calls over /v1 with the official `openai` client,
on the real SmolLM2-135M-Instruct (tests/real_model.py) at a small max_tokens: the
grammar budget must close the JSON in time, and hostile schemas are a 400, not a hang."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

from tests.test_tools_api import ADD, WEATHER  # the same two tools as the tiny-model tests


class City(BaseModel):
    name: str
    country: str
    population: int


def test_parse_with_a_pydantic_model_at_60_tokens(client: OpenAI, smol_name) -> None:
    completion = client.chat.completions.parse(
        model=smol_name,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        max_tokens=60,
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, City)  # the SDK validated it with pydantic
    assert City.model_validate_json(message.content) == message.parsed
    assert completion.usage.completion_tokens <= 60


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call_at_60_tokens(client: OpenAI, smol_name, stream: bool) -> None:
    kwargs = dict(
        model=smol_name,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[ADD, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    if stream:
        name, args, finish = "", "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    assert call.index == 0  # one call
                    name += call.function.name or ""
                    args += call.function.arguments or ""
                finish = choice.finish_reason or finish
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        assert len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        name, args, finish = call.function.name, call.function.arguments, choice.finish_reason
    assert name == "get_weather"
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
    assert finish == "tool_calls"


HOSTILE = {  # every instance must contain itself: no finite JSON matches
    "type": "object",
    "properties": {"self": {"$ref": "#"}},
    "required": ["self"],
}


def test_hostile_schema_is_a_400_and_the_server_stays_up(
    client: OpenAI,
    http: httpx.Client,
    smol_name,
) -> None:
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(
            model=smol_name,
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "loop", "schema": HOSTILE},
            },
            max_tokens=60,
        )
    assert info.value.status_code == 400
    assert "schema" in str(info.value.body).lower()
    assert http.get("/health").status_code == 200
    ok = client.chat.completions.create(  # and it still generates
        model=smol_name, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert ok.choices[0].finish_reason in ("stop", "length")
