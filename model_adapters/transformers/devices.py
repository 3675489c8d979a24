"""Which device and dtype the transformers runtime loads a model on (`auto` resolved)."""

from __future__ import annotations

from typing import Any


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        from model_adapters.cpu import has_native_bf16

        # ~2x float32 at batch 8 where oneDNN has native bf16 (AMX / AVX512-BF16).
        return torch.bfloat16 if has_native_bf16() else torch.float32
    return torch.float32
