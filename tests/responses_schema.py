"""Validate Responses API bodies and stream events against the official OpenAI OpenAPI
schemas: the components they need, copied from the spec into
tests/specs/openai-responses-schemas.json (descriptions and examples stripped)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SPEC = Path(__file__).parent / "specs" / "openai-responses-schemas.json"
URI = "urn:openai-responses"

# Event `type` -> its component schema.
EVENTS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}


def _nullable(node: Any) -> Any:  # OpenAPI 3.0's `nullable` -> JSON Schema
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node


@lru_cache(maxsize=1)
def _registry() -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = _nullable(json.loads(SPEC.read_text(encoding="utf-8")))
    return Registry().with_resource(
        URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )


def validate(instance: Any, schema_name: str) -> None:
    from jsonschema import Draft202012Validator

    schema = {"$ref": f"{URI}#/components/schemas/{schema_name}"}
    Draft202012Validator(schema, registry=_registry()).validate(instance)


def validate_event(event: dict[str, Any]) -> None:
    validate(event, EVENTS[event["type"]])
