"""`chatbot quantize SRC DST`: make a GPTQ int4 (or 2/3/8-bit) checkpoint with gptqmodel.

The result is a normal Hugging Face directory with `quantization_config` in config.json:
`engine: transformers` loads it through transformers + optimum + gptqmodel (CPU or GPU)
and `engine: vllm` with `options: {quantization: gptq}`. Needs `pip install '.[gptq]'`.
Quantizing runs on CUDA when present, else on CPU (slow for big models).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Generic text used when no --calibration file is given. Real models quantize better with
# a few hundred samples of the text they will see (pass --calibration).
DEFAULT_CALIBRATION = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "In 1969, astronauts landed on the Moon and returned safely to Earth a few days later.",
    "To install the package, run pip install and then import it from your Python code.",
    "The weather in Paris is sunny today, with a light breeze and a high of 24 degrees.",
    "Question: what is the capital of Italy? Answer: the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    '{"name": "get_weather", "arguments": {"city": "London", "unit": "celsius"}}',
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Please summarise the following document in three sentences for a busy reader.",
    "The meeting was moved to Thursday at ten, in the large room on the second floor.",
    "Water boils at 100 degrees Celsius at sea level and at lower temperatures higher up.",
    "User: hello, who are you?\nAssistant: I am a helpful assistant. How can I help?",
]

Progress = Callable[[str], None]


def load_calibration(path: str | Path) -> list[str]:
    """Calibration texts from a file: .jsonl (a "text" field per line), .json (a list of
    strings or of {"text": ...}), or plain text (one sample per non-empty paragraph)."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    elif path.suffix == ".json":
        items = json.loads(raw)
        texts = [item if isinstance(item, str) else item["text"] for item in items]
    else:
        texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
        if len(texts) < 2:
            texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path}: no calibration text found")
    return texts


def quantize(
    src: str | Path,
    dst: str | Path,
    bits: int = 4,
    group_size: int = 128,
    calibration: list[str] | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Quantize the checkpoint at `src` to GPTQ and write it to `dst`. Returns `dst`."""
    step = progress or (lambda _msg: None)
    # gptqmodel sizes its CPU thread pool from this; unset, it under-uses small machines.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    try:
        from gptqmodel import GPTQModel, QuantizeConfig
    except ImportError as exc:
        raise RuntimeError("quantizing needs gptqmodel: pip install '.[gptq]'") from exc

    src, dst = Path(src), Path(dst)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} is not a Hugging Face model directory (no config.json)")
    texts = calibration or DEFAULT_CALIBRATION
    step(f"loading {src}")
    config = QuantizeConfig(bits=bits, group_size=group_size)
    model = GPTQModel.load(str(src), config, trust_remote_code=trust_remote_code)
    step(f"quantizing to {bits} bits (group size {group_size}, {len(texts)} samples)")
    model.quantize(texts, batch_size=1, calibration_data_min_length=1)
    step(f"saving {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    model.save(str(dst))
    _copy_tokenizer_files(src, dst)
    return dst


def _copy_tokenizer_files(src: Path, dst: Path) -> None:
    # The chat template and tokenizer must travel with the weights.
    for name in (
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ):
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def run_with_progress(src: str, dst: str, **kwargs: Any) -> Path:
    """`quantize` with a rich progress bar over its stages (for the CLI)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("starting", total=3)
        done = {"n": -1}

        def step(message: str) -> None:
            done["n"] += 1
            bar.update(task, description=message, completed=done["n"])

        result = quantize(src, dst, progress=step, **kwargs)
        bar.update(task, description=f"done: {result}", completed=3)
    return result


def missing_gptq_packages() -> list[str]:
    """Packages that loading a GPTQ checkpoint through transformers needs but lacks."""
    import importlib.util

    return [p for p in ("gptqmodel", "optimum") if importlib.util.find_spec(p) is None]


def is_gptq_checkpoint(path: str | Path) -> bool:
    """Whether config.json declares a GPTQ quantization (loads through gptqmodel)."""
    config = Path(path) / "config.json"
    if not config.exists():
        return False
    qc = json.loads(config.read_text()).get("quantization_config") or {}
    return str(qc.get("quant_method", "")).lower() == "gptq"
