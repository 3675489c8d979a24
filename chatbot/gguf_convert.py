"""Convert a GGUF file into a Hugging Face model folder (for the transformers/vLLM engines).

transformers dequantizes the GGUF's weights on load; the folder written here holds them
unquantized (`dtype`), with the GGUF's tokenizer and chat template.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, name: str) -> Path:
    """A file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"python package {package!r} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def gguf_to_hf(gguf: Path, out: Path, dtype: str = "float32") -> Path:
    """Write `gguf` as a transformers folder at `out` (skipped if `out` already has one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=getattr(torch, dtype), **kwargs
    )
    # save_pretrained refuses a GGUF-quantized model: the weights are plain tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.replace(out)
    return out
