"""Validate JSON against the official OpenAI OpenAPI spec's component schemas.

The schemas come from tests/specs/openai-openapi.json: the parts of the official spec
the tests use (MIT licensed; rebuilt from the full spec by tests/specs/trim_spec.py).
The spec is OpenAPI 3.1 but still marks some fields `nullable: true` (3.0 style), which
JSON Schema ignores: those become `anyOf [..., {"type": "null"}]` here, as OpenAPI means.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).resolve().parent / "specs" / "openai-openapi.json"
URI = "urn:openai-openapi"


def nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` -> JSON Schema's anyOf [..., null]."""
    if isinstance(node, list):
        return [nullable_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: nullable_to_json_schema(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        meta = {k: node.pop(k) for k in ("description", "deprecated") if k in node}
        return {"anyOf": [node, {"type": "null"}], **meta}
    return node


def spec_registry(path: Path, uri: str) -> Any:
    """A `referencing` registry holding the spec file at `path` under `uri`."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = nullable_to_json_schema(json.loads(path.read_text(encoding="utf-8")))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return Registry().with_resource(uri, resource)


@lru_cache(maxsize=1)
def _registry() -> Any:
    return spec_registry(SPEC_PATH, URI)


def validate(instance: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components/schemas/NAME."""
    from jsonschema import Draft202012Validator

    registry = _registry()
    schema = {"$ref": f"{URI}#/components/schemas/{schema_name}"}
    Draft202012Validator(schema, registry=registry).validate(instance)
