"""Cheap static checks on a JSON schema before any grammar is built or searched.

xgrammar compiles a schema whose every instance is infinite (a required `{"$ref": "#"}`,
a required a -> b -> a cycle) without complaint, and then its jump-forward search never
ends, eating memory until the process dies. Such schemas, and plainly unsatisfiable ones
(`false`, an empty `enum`, `minimum > maximum`, ...), are refused here with a ValueError
naming the path, in time linear in the schema's size.
"""

from __future__ import annotations

from typing import Any

# A schema this large is refused before xgrammar spends minutes compiling it.
MAX_SCHEMA_NODES = 5000


class SchemaError(ValueError):
    """A schema no output can satisfy in finite length."""


def _resolve(root: Any, ref: str) -> Any:
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise SchemaError(f"$ref {ref!r}: only local references ('#/...') are supported")
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"$ref {ref!r} does not resolve")
    return node


def _unsatisfiable(node: dict[str, Any]) -> str | None:
    """A reason this node alone admits no value, or None."""
    pairs = (
        ("minimum", "maximum"),
        ("minLength", "maxLength"),
        ("minItems", "maxItems"),
        ("minProperties", "maxProperties"),
    )
    for low, high in pairs:
        lo, hi = node.get(low), node.get(high)
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
            return f"{low} {lo} > {high} {hi}"
    lo, hi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo >= hi:
        return f"exclusiveMinimum {lo} >= exclusiveMaximum {hi}"
    if "enum" in node and isinstance(node["enum"], list) and not node["enum"]:
        return "empty enum"
    if isinstance(node.get("type"), list) and not node["type"]:
        return "empty type list"
    return None


class _Checker:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes: dict[int, Any] = {}  # id -> node, every schema node reachable
        self.paths: dict[int, str] = {}

    def collect(self, node: Any, path: str) -> None:
        stack = [(node, path)]
        while stack:
            node, path = stack.pop()
            if id(node) in self.nodes:
                continue
            if not isinstance(node, dict | bool):
                raise SchemaError(f"{path}: a schema must be an object or a boolean")
            self.nodes[id(node)] = node
            self.paths[id(node)] = path
            if len(self.nodes) > MAX_SCHEMA_NODES:
                raise SchemaError(f"schema too large (over {MAX_SCHEMA_NODES} subschemas)")
            if isinstance(node, bool):
                continue
            if reason := _unsatisfiable(node):
                raise SchemaError(f"{path}: unsatisfiable ({reason})")
            for child, sub in self.children(node, path):
                stack.append((child, sub))

    def children(self, node: dict[str, Any], path: str) -> list[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        if isinstance(node.get("$ref"), str):
            out.append((_resolve(self.root, node["$ref"]), f"{path}/$ref"))
        for key in ("properties", "$defs", "definitions", "patternProperties"):
            for name, sub in (node.get(key) or {}).items():
                out.append((sub, f"{path}/{key}/{name}"))
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for i, sub in enumerate(node.get(key) or []):
                out.append((sub, f"{path}/{key}/{i}"))
        for key in ("items", "additionalProperties", "not", "contains"):
            if isinstance(node.get(key), dict | bool):
                out.append((node[key], f"{path}/{key}"))
        return out

    def finite(self, node: Any, ok: set[int]) -> bool:
        """Has a finite instance, given that the nodes in `ok` have one."""
        if isinstance(node, bool):
            return node
        deps: list[Any] = []
        if isinstance(node.get("$ref"), str):
            deps.append(_resolve(self.root, node["$ref"]))
        deps += node.get("allOf") or []
        props = node.get("properties") or {}
        deps += [props[name] for name in node.get("required") or [] if name in props]
        items = node.get("items")
        prefix = node.get("prefixItems") or []
        min_items = node.get("minItems") or 0
        deps += prefix[:min_items]
        if min_items > len(prefix) and isinstance(items, dict | bool):
            deps.append(items)
        if not all(id(d) in ok for d in deps):
            return False
        for key in ("anyOf", "oneOf"):
            branches = node.get(key)
            if branches and not any(id(b) in ok for b in branches):
                return False
        return True

    def check(self) -> None:
        self.collect(self.root, "#")
        ok: set[int] = set()
        changed = True
        while changed:  # least fixpoint: grows monotonically, at most len(nodes) rounds
            changed = False
            for key, node in self.nodes.items():
                if key not in ok and self.finite(node, ok):
                    ok.add(key)
                    changed = True
        if id(self.root) not in ok:
            bad = [p for k, p in self.paths.items() if k not in ok and p != "#"]
            where = f" (see {sorted(bad, key=len)[0]})" if bad else ""
            raise SchemaError(
                "schema has no finite valid instance: a required self-reference or "
                f"reference cycle, or an unsatisfiable part{where}"
            )


def check_schema(schema: Any) -> None:
    """Raise SchemaError if `schema` has no finite instance (or cannot be read)."""
    _Checker(schema).check()
