"""Tools for local models: normalising tools and tool_choice, prompting, forcing calls.

Shared by every local engine through `ChatLocal`. Tools may be LangChain tools, pydantic
models, TypedDicts, functions or OpenAI dicts; they all become OpenAI tool dicts here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_tool

from model_adapters.call_schema import tool_call_tag
from model_adapters.constrained import GuidedConstraint
from model_adapters.generation import Constraint
from model_adapters.prompting import template_supports_tools
from model_adapters.tool_parsers import HermesParser, Llama3Parser, MistralParser, ToolCallParser

# tool_choice after normalisation: "auto", "none", "required", or a tool name.
ToolChoice = str


def normalize_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Any supported tool form -> OpenAI tool dicts; a clear error names the bad one."""
    out = []
    for i, tool in enumerate(tools or []):
        try:
            converted = convert_to_openai_tool(tool)
        except Exception as exc:  # noqa: BLE001 - langchain raises several types here
            raise ValueError(f"tools[{i}]: cannot convert {tool!r} to a tool: {exc}") from exc
        fn = converted.get("function") if converted.get("type") == "function" else None
        if not fn or not fn.get("name"):
            raise ValueError(f"tools[{i}]: only function tools are supported")
        out.append(converted)
    return out


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def normalize_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> ToolChoice:
    """LangChain / OpenAI / Anthropic tool_choice forms -> "auto" | "none" | "required" | name."""
    names = tool_names(tools)
    if choice is None or choice == "auto":
        return "auto"
    if choice is False or choice == "none":
        return "none"
    if choice is True:  # LangChain: force the one bound tool
        return names[0] if len(names) == 1 else "required"
    if choice in ("required", "any"):
        result: ToolChoice = "required"
    elif isinstance(choice, str):
        result = choice
    elif isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and isinstance(choice.get("function"), dict):
            result = str(choice["function"].get("name"))
        elif kind == "tool" and choice.get("name"):  # Anthropic style
            result = str(choice["name"])
        elif kind in ("any", "required", "auto", "none"):
            return normalize_tool_choice(kind, tools)
        else:
            raise ValueError(f"tool_choice: unsupported value {choice!r}")
    else:
        raise ValueError(f"tool_choice: unsupported value {choice!r}")
    if not tools:
        raise ValueError(f"tool_choice: {choice!r} needs tools, but none were given")
    if result != "required" and result not in names:
        raise ValueError(f"tool_choice: no tool named {result!r} (tools: {names})")
    return result


def forcing_constraint(
    tools: list[dict[str, Any]],
    choice: ToolChoice,
    parser: ToolCallParser,
    max_tokens: int,
    parallel: bool = True,
) -> Constraint | None:
    """A grammar that makes the model call a tool, for `required` and named choices:
    one or more calls with `parallel` (OpenAI's parallel_tool_calls default), else one."""
    if choice in ("auto", "none") or not tools:
        return None
    chosen = (
        tools if choice == "required" else [t for t in tools if t["function"]["name"] == choice]
    )
    tag = tool_call_tag(chosen, parser, parallel=parallel)
    return GuidedConstraint("structural_tag", tag, max_tokens=max_tokens, source="tools")


# --- prompting -----------------------------------------------------------------------


def _format_instructions(parser: ToolCallParser) -> str:
    if isinstance(parser, Llama3Parser):
        return (
            "To call a function, respond only with a JSON object of the form "
            '{"name": <function-name>, "parameters": <args-json-object>}.'
        )
    if isinstance(parser, MistralParser):
        return (
            "To call functions, respond with [TOOL_CALLS] followed by a JSON list: "
            '[TOOL_CALLS][{"name": <function-name>, "arguments": <args-json-object>}]'
        )
    return (
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def tools_system_prompt(tools: list[dict[str, Any]], parser: ToolCallParser | None = None) -> str:
    """The tool list and call format as system-prompt text (for templates without tools)."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"<tools>\n{listing}\n</tools>\n\n{_format_instructions(parser or HermesParser())}"
    )


def add_tools_to_messages(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tokenizer: Any,
    parser: ToolCallParser,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Returns (messages, tools for the template). When the chat template cannot take
    tools, they go into the system prompt instead and the template gets none."""
    if not tools:
        return messages, None
    if template_supports_tools(tokenizer):
        return messages, tools
    text = tools_system_prompt(tools, parser)
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        return [first, *messages[1:]], None
    return [{"role": "system", "content": text}, *messages], None
