"""`with_structured_output` for local chat models (same methods and shapes as ChatOpenAI).

- json_schema: decode under the schema's grammar (response_format json_schema).
- function_calling: a forced call to a tool built from the schema.
- json_mode: a JSON object; since a local model can be held to the schema itself, the
  schema's grammar is used here too, so the object also validates.
Output always parses; pydantic schemas come back as instances, others as dicts.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from model_adapters.constrained import GuidedConstraint
from model_adapters.generation import Constraint

METHODS = ("json_schema", "function_calling", "json_mode")


def _is_pydantic(schema: Any) -> bool:
    return isinstance(schema, type) and is_basemodel_subclass(schema)  # pydantic v2 or v1


def _json_schema(schema: Any) -> dict[str, Any]:
    """Plain JSON schema for any accepted input (OpenAI function dicts included)."""
    if isinstance(schema, dict) and "parameters" in schema and "name" in schema:
        return schema["parameters"]
    if isinstance(schema, dict) and schema.get("type") == "function":
        return schema["function"].get("parameters", {})
    return convert_to_json_schema(schema)


def structured_output_runnable(
    model: BaseChatModel,
    schema: dict[str, Any] | type,
    method: str = "json_schema",
    include_raw: bool = False,
    strict: bool | None = None,
    **kwargs: Any,
) -> Runnable:
    if kwargs:
        raise ValueError(f"with_structured_output: unsupported arguments {sorted(kwargs)}")
    if method not in METHODS:
        raise ValueError(f"with_structured_output: method must be one of {METHODS}, not {method!r}")
    if schema is None:
        raise ValueError("with_structured_output: schema is required")
    pydantic = _is_pydantic(schema)
    trace = {"kwargs": {"method": method}, "schema": convert_to_json_schema(schema)}
    if method == "function_calling":
        tool = convert_to_openai_tool(schema)
        name = tool["function"]["name"]
        llm = model.bind_tools([tool], tool_choice=name, ls_structured_output_format=trace)
        parser: Runnable = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            if pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    else:
        json_schema = _json_schema(schema)
        title = json_schema.get("title") or "output"
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": title, "schema": json_schema, "strict": True},
        }
        llm = model.bind(response_format=response_format, ls_structured_output_format=trace)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()  # type: ignore[arg-type]
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    with_fallback = parsed.with_fallbacks([failed], exception_key="parsing_error")
    return RunnableMap(raw=llm) | with_fallback


def response_format_constraint(response_format: Any, max_tokens: int) -> Constraint | None:
    """OpenAI `response_format` ({"type": "json_schema" | "json_object" | "text"}, or a
    pydantic class as LangChain allows) -> a constraint; a clear error for anything else."""
    if response_format is None:
        return None
    if isinstance(response_format, type):
        schema = convert_to_json_schema(response_format)
        return GuidedConstraint("json_schema", schema, max_tokens=max_tokens)
    if not isinstance(response_format, dict):
        raise ValueError(
            f"response_format: expected an object, got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GuidedConstraint("json_object", None, max_tokens=max_tokens)
    if kind == "json_schema":
        body = response_format.get("json_schema")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), dict):
            raise ValueError("response_format.json_schema.schema: a JSON schema object is required")
        return GuidedConstraint("json_schema", body["schema"], max_tokens=max_tokens)
    raise ValueError(
        f"response_format.type: expected 'text', 'json_object' or 'json_schema', got {kind!r}"
    )
