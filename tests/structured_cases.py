"""The structured-output sweep's cases, shared by the tests and bench/structured_sweep.py.

Schemas cover nested objects, arrays, enums, string length bounds, integer bounds,
optional fields and anyOf. Each case runs one request (a json_schema response_format or
a forced tool call) and returns None when the reply parses (strict JSON) and validates,
else why not. `Tally` counts cases and invalid replies for the report.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from model_adapters.constrained import GuidedConstraint, check_constraint
from model_adapters.tool_parsers import get_parser
from model_adapters.tools import forcing_constraint

PROMPT = "Fill in a realistic example record as JSON."
TOOL = "record"


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": _obj(
        {
            "user": _obj(
                {"name": {"type": "string"}, "home": _obj({"city": {"type": "string"}}, ["city"])},
                ["name", "home"],
            )
        },
        ["user"],
    ),
    "array": _obj(
        {"scores": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4}},
        ["scores"],
    ),
    "enum": _obj(
        {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["S", "M", "L"]}},
        ["color", "size"],
    ),
    "strlen": _obj(
        {
            "code": {"type": "string", "minLength": 3, "maxLength": 6},
            "note": {"type": "string", "maxLength": 12},
        },
        ["code", "note"],
    ),
    "intbounds": _obj(
        {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "delta": {"type": "integer", "minimum": -5, "maximum": 5},
        },
        ["age", "delta"],
    ),
    "optional": _obj(
        {"title": {"type": "string"}, "year": {"type": "integer"}, "tag": {"type": "string"}},
        ["title"],
    ),
    "anyof": _obj(
        {
            "value": {
                "anyOf": [
                    {"type": "integer", "minimum": 0},
                    _obj({"text": {"type": "string", "maxLength": 8}}, ["text"]),
                ]
            }
        },
        ["value"],
    ),
}
MODES = ("json_schema", "tool")


def tool_for(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": TOOL, "description": "Store one record.", "parameters": schema},
    }


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema}}


def invalid(text: str | None, schema: dict[str, Any]) -> str | None:
    """Why `text` is not a valid instance of `schema` (strict JSON: no raw control
    characters), or None."""
    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]} in {text!r:.200}"
    return None


def shortest(chat: Any, schema: dict[str, Any], mode: str) -> int:
    """Tokens of the shortest valid reply for a ChatLocal (the minimum max_tokens)."""
    runtime = chat.runtime
    tokenizer = runtime.tokenizer
    config = getattr(getattr(runtime, "model", None), "config", None)
    if mode == "json_schema":
        constraint = GuidedConstraint("json_schema", schema)
    else:
        parser = get_parser(chat.tool_parser, tokenizer, [TOOL])
        constraint = forcing_constraint([tool_for(schema)], TOOL, parser, 1 << 20, False)
    return check_constraint(constraint, tokenizer, config)


def budgets(need: int, top: int = 256, points: int = 3) -> list[int]:
    """A few max_tokens from the minimum up to `top`."""
    picks = [need, need + 3, need + 12, 64, 128, top][: max(points - 1, 1)] + [top]
    return sorted({b for b in picks if need <= b <= top})


# Schemas whose every valid reply is short: a greedy real model cannot ramble there, so
# CI tests run them at max_tokens 256 too (the others at the minimum and 12 more, which
# cover closing at once and after sampling; the bench runs all of them up to 256).
SELF_BOUNDED = ("enum", "intbounds")


def ci_budgets(name: str, need: int, mid: bool = True) -> list[int]:
    return [need] + [need + 12] * mid + [256] * (name in SELF_BOUNDED)


def short_budgets(_name: str, need: int) -> list[int]:
    """The sweeps of the other engines and tokenizers: closing at once and after sampling."""
    return [need, need + 12]


SAMPLED = [{"seed": seed, "temperature": 1.0} for seed in (0, 1)]


def local_case(chat: Any, schema: dict[str, Any], mode: str, max_tokens: int, **gen: Any):
    """One ChatLocal request; None when valid, else the reason."""
    if mode == "json_schema":
        reply = chat.invoke(
            PROMPT, response_format=response_format(schema), max_tokens=max_tokens, **gen
        )
        if reply.response_metadata.get("finish_reason") != "stop":
            return f"finish_reason {reply.response_metadata.get('finish_reason')!r}"
        problem = invalid(reply.content, schema)
    else:
        bound = chat.bind_tools([tool_for(schema)], tool_choice=TOOL)
        reply = bound.invoke(PROMPT, max_tokens=max_tokens, **gen)
        if len(reply.tool_calls) != 1 or reply.invalid_tool_calls:
            return f"calls {reply.tool_calls} invalid {reply.invalid_tool_calls}"
        problem = invalid(json.dumps(reply.tool_calls[0]["args"]), schema)
    used = reply.usage_metadata["output_tokens"]
    if problem is None and used > max_tokens:
        problem = f"{used} tokens > max_tokens {max_tokens}"
    return problem


def local_sweep(
    chat: Any,
    label: str,
    gens: list[dict[str, Any]],
    picks: Callable[[str, int], list[int]] = ci_budgets,
) -> tuple[Tally, int]:
    """Every schema and mode on a ChatLocal at `picks(name, shortest)` max_tokens, once per
    `gens`; also the number of requests one token below the shortest that were refused
    with an error naming max_tokens (all of them should be)."""
    cases: dict[str, Callable[[], str | None]] = {}
    refused = 0
    for mode in MODES:
        for name, schema in SCHEMAS.items():
            need = shortest(chat, schema, mode)
            try:
                local_case(chat, schema, mode, need - 1)
            except ValueError as exc:
                refused += "max_tokens" in str(exc)
            for max_tokens in picks(name, need):
                for gen in gens:
                    cases[f"{mode}/{name}@{max_tokens}/{gen}"] = functools.partial(
                        local_case, chat, schema, mode, max_tokens, **gen
                    )
    return Tally(label).run(cases), refused


def openai_case(client: Any, model: str, schema: dict[str, Any], mode: str, max_tokens: int, **gen):
    """One /v1 request with the official openai client; None when valid, else why not."""
    messages = [{"role": "user", "content": PROMPT}]
    if mode == "json_schema":
        extra: dict[str, Any] = {"response_format": response_format(schema)}
    else:
        extra = {
            "tools": [tool_for(schema)],
            "tool_choice": {"type": "function", "function": {"name": TOOL}},
        }
    out = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, **extra, **gen
    )
    choice = out.choices[0]
    if out.usage.completion_tokens > max_tokens:
        return f"{out.usage.completion_tokens} tokens > max_tokens {max_tokens}"
    if mode == "json_schema":
        if choice.finish_reason != "stop":
            return f"finish_reason {choice.finish_reason!r}"
        return invalid(choice.message.content, schema)
    calls = choice.message.tool_calls or []
    if choice.finish_reason != "tool_calls" or len(calls) != 1 or calls[0].function.name != TOOL:
        return f"finish_reason {choice.finish_reason!r}, calls {calls}"
    return invalid(calls[0].function.arguments, schema)


@dataclass
class Tally:
    """Cases tried and invalid replies of one sweep (printed for the report)."""

    name: str
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per case

    def add(self, label: str, problem: str | None) -> None:
        self.cases += 1
        if problem is not None:
            self.failures.append(f"{label}: {problem}")

    @property
    def invalid(self) -> int:
        return len(self.failures)

    def report(self) -> str:
        slowest = max(self.seconds, default=0.0)
        lines = [
            f"sweep {self.name}: cases {self.cases}, invalid {self.invalid}, "
            f"slowest case {slowest:.1f} s"
        ]
        return "\n".join(lines + [f"  {f}" for f in self.failures[:10]])

    def run(self, cases: dict[str, Callable[[], str | None]], workers: int = 4) -> Tally:
        """Run the cases `workers` at a time (the engines batch them); an exception is an
        invalid reply too."""

        def one(call: Callable[[], str | None]) -> str | None:
            start = time.monotonic()
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                return f"raised {type(exc).__name__}: {str(exc)[:200]}"
            finally:
                self.seconds.append(time.monotonic() - start)

        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, cases.values()))
        for label, problem in zip(cases, results, strict=True):
            self.add(label, problem)
        return self
