"""Validate Responses API bodies and stream events against the official OpenAI OpenAPI
schemas: the components they need, copied from the spec into
tests/specs/openai-responses-schemas.json (descriptions and examples stripped)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.openai_schema import spec_registry

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


@lru_cache(maxsize=1)
def _registry() -> Any:
    return spec_registry(SPEC, URI)


def validate(instance: Any, schema_name: str) -> None:
    from jsonschema import Draft202012Validator

    schema = {"$ref": f"{URI}#/components/schemas/{schema_name}"}
    Draft202012Validator(schema, registry=_registry()).validate(instance)


def validate_event(event: dict[str, Any]) -> None:
    validate(event, EVENTS[event["type"]])
