"""Loading a registry file: YAML (duplicate keys refused), ${VAR} expansion, per-entry
checks against the engines known here, and cross-entry checks (serve, defaults, fallbacks)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatbot.engines import engine_class, known_engines
from chatbot.registry.entries import ModelEntry, RegistryError
from chatbot.registry.lookup import Registry
from chatbot.registry.paths import resolve_model_path

log = logging.getLogger(__name__)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str | None = None
    default_embeddings: str | None = None
    serve: list[str] | None = None
    models: dict[str, Any] = Field(default_factory=dict)
    embeddings: dict[str, Any] = Field(default_factory=dict)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of duplicate keys; a duplicate model name is an error."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise RegistryError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                "(model names must be unique)"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expand_env(value: Any, where: str) -> Any:
    """Replace ${VAR} in strings with the environment's value; unset is an error."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in os.environ:
                raise RegistryError(f"{where}: environment variable ${{{var}}} is not set")
            return os.environ[var]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _format_error(exc: ValidationError, where: str, sep: str = ".") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        lines.append(f"{where}{sep}{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")
    return "; ".join(lines)


def _check_entry(entry: ModelEntry, models_root: Path, where: str) -> None:
    if entry.provider and entry.engines:
        raise RegistryError(f"{where}: give either 'provider' or 'engines', not both")
    if entry.provider:
        entry.engines = [entry.provider]
    if not entry.engines:
        entry.engines = ["transformers" if entry.kind == "chat" else "sentence-transformers"]
    for i, name in enumerate(entry.engines):
        try:
            cls = engine_class(name)
        except LookupError as exc:
            field = "provider" if entry.provider else f"engines[{i}]"
            found = exc.args and exc.args[0] != name  # found but unusable: say why
            reason = exc.args[0] if found else f"unknown engine {name!r}"
            raise RegistryError(f"{where}.{field}: {reason} (known: {known_engines()})") from exc
        if entry.kind not in cls.kinds:
            raise RegistryError(f"{where}: engine {name!r} cannot serve {entry.kind} models")
        if entry.replicas and cls.needs_path:
            raise RegistryError(
                f"{where}.replicas: engine {name!r} is local; replicas need "
                "a remote provider (each replica is a base_url)"
            )
        if cls.needs_path and entry.path is None:
            raise RegistryError(f"{where}.path: engine {name!r} needs a 'path'")
        if not cls.needs_path and entry.model is None and entry.path is None:
            raise RegistryError(f"{where}.model: provider {name!r} needs a 'model'")
    if entry.path is not None:
        try:
            resolved = resolve_model_path(entry.path, models_root)
        except FileNotFoundError as exc:
            # Another machine's model (or a fresh clone without it) must not stop the
            # entries that are there: warn now, fail only if this entry is asked for.
            entry.unavailable = f"{where}.path: {exc}"
            log.warning("%s (entry not served)", entry.unavailable)
            return
        entry.resolved_path = resolved if isinstance(resolved, Path) else None


def parse_registry(data: Any, models_root: Path, source: str = "<memory>") -> Registry:
    """Validate an already-parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: top level must be a mapping with 'models:'")
    try:
        top = RegistryFile.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(_format_error(exc, source, sep=": ")) from None

    entries: dict[str, ModelEntry] = {}
    for section, kind in (("models", "chat"), ("embeddings", "embeddings")):
        for name, body in getattr(top, section).items():
            where = f"{source}: {section}.{name}"
            if name in entries:
                raise RegistryError(f"{where}: duplicate name {name!r} (also in another section)")
            if not isinstance(body, dict):
                raise RegistryError(f"{where}: must be a mapping of fields")
            body = _expand_env(body, where)
            try:
                entry = ModelEntry.model_validate({**body, "name": str(name), "kind": kind})
            except ValidationError as exc:
                raise RegistryError(_format_error(exc, where)) from None
            _check_entry(entry, models_root, where)
            entries[str(name)] = entry

    for i, name in enumerate(top.serve or []):
        if name not in entries:
            raise RegistryError(f"{source}: serve[{i}]: no entry named {name!r}")
        if entries[name].unavailable:
            raise RegistryError(f"{source}: serve[{i}]: {entries[name].unavailable}")
    for field, kind in (("default_model", "chat"), ("default_embeddings", "embeddings")):
        name = getattr(top, field)
        if name is not None and (name not in entries or entries[name].kind != kind):
            raise RegistryError(f"{source}: {field}: no {kind} entry named {name!r}")
    for entry in entries.values():
        for i, fb in enumerate(entry.fallbacks):
            if fb not in entries or entries[fb].kind != entry.kind or fb == entry.name:
                raise RegistryError(
                    f"{source}: models.{entry.name}.fallbacks[{i}]: no other entry named {fb!r}"
                )
    for entry in entries.values():  # a fallback chain that loops back would never end
        path, todo = [entry.name], list(entry.fallbacks)
        while todo:
            name = todo.pop()
            if name == entry.name:
                raise RegistryError(
                    f"{source}: models.{entry.name}.fallbacks: fallbacks "
                    f"form a cycle back to {entry.name!r}"
                )
            if name not in path:
                path.append(name)
                todo.extend(entries[name].fallbacks)
    return Registry(entries, top.default_model, top.default_embeddings, top.serve, source)


def load_registry(path: str | Path, models_root: str | Path = "./llm_models") -> Registry:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: invalid YAML: {exc}") from None
    return parse_registry(data, Path(models_root), source=str(path))
