"""Rebuild tests/specs/openai-openapi.json: the component schemas the tests validate
against (ROOTS) and every schema they reference, cut from the full OpenAI OpenAPI spec
(MIT licensed, github.com/openai/openai-openapi).

    python tests/specs/trim_spec.py path/to/openai-openapi.json [ExtraSchema ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
]
PREFIX = "#/components/schemas/"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in ([v] if k == "$ref" else _refs(v))]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def trim(spec: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += [r.removeprefix(PREFIX) for r in _refs(schemas[name])]
    return {
        "openapi": spec.get("openapi"),
        "info": spec.get("info"),
        "components": {"schemas": {k: schemas[k] for k in sorted(keep)}},
    }


if __name__ == "__main__":
    full = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    out = Path(__file__).with_name("openai-openapi.json")
    out.write_text(json.dumps(trim(full, ROOTS + sys.argv[2:]), indent=1) + "\n", "utf-8")
