"""A registry narrowed to some models (`chatbot serve --model ...`): each is a registry
name, or a path that becomes an ad-hoc transformers entry."""

from __future__ import annotations

from pathlib import Path

from chatbot.registry.entries import RegistryError
from chatbot.registry.loading import parse_registry
from chatbot.registry.lookup import Registry


def narrow_registry(base: Registry, models: list[str], models_root: Path) -> Registry:
    """`base` serving only `models` (the first is the default chat model).

    Each of `models` is a registry name, or a path to a model directory or GGUF file (or
    `hf://org/name`, `pkg://module/file`), which becomes an ad-hoc transformers entry
    named after its last part. The registry's served embeddings stay served; its other
    entries are not served, so one that is broken here (a missing path) does not matter.
    """
    entries = dict(base.entries)
    serve: list[str] = []
    for given in models:
        if given in entries:
            serve.append(given)
            continue
        path = Path(given).expanduser()
        if given.startswith(("hf://", "pkg://")):
            raw, name = given, given.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")
        elif path.exists():
            raw, name = str(path.resolve()), path.resolve().name.removesuffix(".gguf")
        else:
            known = ", ".join(sorted(base.entries)) or "none"
            raise RegistryError(f"--model {given!r}: not a registry entry ({known}) and not a path")
        while name in entries:
            name += "-1"
        body = {"path": raw, "engines": ["transformers"], "description": f"ad-hoc: {given}"}
        entry = parse_registry({"models": {name: body}}, models_root).entries[name]
        if entry.unavailable:
            raise RegistryError(f"--model {given!r}: {entry.unavailable}")
        entries[name] = entry
        serve.append(name)
    serve += [e.name for e in base.served("embeddings") if e.name not in serve]
    return Registry(
        entries,
        default_model=serve[0],
        default_embeddings=base.default_embeddings,
        serve=serve,
        source=base.source,
    )
