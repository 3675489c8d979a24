"""Built-in agent tools: a safe calculator, the current time, knowledge-base search."""

from __future__ import annotations

import ast
import math
import operator
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain_core.tools import BaseTool, tool

if TYPE_CHECKING:
    from chatbot.settings import Settings

MAX_EXPRESSION = 500
MAX_EXPONENT = 10_000

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    name: getattr(math, name)
    for name in (
        "sqrt",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "log",
        "log2",
        "log10",
        "exp",
        "floor",
        "ceil",
        "factorial",
        "radians",
        "degrees",
    )
} | {"abs": abs, "round": round, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def evaluate(expression: str) -> float | int:
    """Arithmetic on numbers only, by walking the syntax tree (no eval(): no names,
    attributes or calls beyond the math functions above). ValueError on anything else."""
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent larger than {MAX_EXPONENT}")
        if isinstance(node.op, (ast.Pow, ast.Mult)) and _too_big(node.op, left, right):
            raise ValueError("result too large")
        return _BINARY[type(node.op)](left, right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_eval(a) for a in node.args]
        if node.func.id == "factorial" and (args and args[0] > 1000):
            raise ValueError("factorial argument larger than 1000")
        return _FUNCTIONS[node.func.id](*args)
    raise ValueError(
        f"unsupported element {ast.dump(node)[:60]!r}: use numbers, + - * / // % "
        f"** and {', '.join(sorted(_FUNCTIONS))}"
    )


def _too_big(op: ast.operator, left: float | int, right: float | int) -> bool:
    """Integer results beyond ~100k bits would take the CPU hostage."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return False
    if isinstance(op, ast.Pow):
        return left.bit_length() * abs(right) > 100_000
    return left.bit_length() + right.bit_length() > 100_000


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. '(3 + 4) * 2 ** 10' or 'sqrt(2)'."""
    try:
        result = evaluate(expression)
    except (ValueError, ArithmeticError, TypeError) as exc:
        return f"error: {exc}"
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        result = int(result)
    return str(result)


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone such as 'UTC' or 'Europe/Paris'."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"error: unknown time zone {timezone!r}"
    return datetime.now(zone).isoformat(timespec="seconds")


def kb_search_tool(kb: str, k: int = 4, settings: Settings | None = None) -> BaseTool:
    """A tool that searches knowledge base `kb` (of `settings`, default the process's) and
    returns passages with their sources."""
    from chains.kb import KBError, search
    from chains.rag import format_context

    @tool("search_knowledge_base")
    def search_knowledge_base(query: str) -> str:
        """Search the knowledge base for passages about the query; cite their sources."""
        try:
            docs = search(kb, query, k=k, settings=settings)
        except KBError as exc:
            return f"error: {exc}"
        return format_context(docs) or "no passages found"

    search_knowledge_base.description = (
        f"Search the knowledge base {kb!r} for passages about the query; "
        "returns numbered passages with their file and line range."
    )
    return search_knowledge_base


BUILTIN_TOOLS: list[BaseTool] = [calculator, current_time]
