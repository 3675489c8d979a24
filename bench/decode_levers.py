"""Decode-step levers of the transformers engine, measured on plain `generate()`:

    float32 eager | bfloat16 eager | bfloat16 + static KV cache | + torch.compile

Same real model (SmolLM2-135M-Instruct by default), greedy, `--tokens` new tokens per
request, batch sizes `--batch`. The variants alternate within each round, so their
ratios are measured side by side; the table has each one's median tokens/s and its ratio
to bfloat16 eager with the dynamic cache (what the engine runs).

    python bench/decode_levers.py --threads 2                 # batch 1,8; no compile
    python bench/decode_levers.py --threads 2 --compile       # + torch.compile (minutes)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PROMPTS, add_model_args, fmt, median, model_dir, print_table  # noqa: E402


def load(path: Path, dtype: str, compiled: bool):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
    if compiled:
        model.forward = torch.compile(model.forward)
    return model


def tokens_per_s(model, tokenizer, batch: int, tokens: int, static: bool) -> float:
    import torch

    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(batch)]
    inputs = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )
    extra = {"cache_implementation": "static"} if static else {}
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **extra
        )
    return batch * tokens / (time.perf_counter() - start)


def main() -> None:
    from transformers import AutoTokenizer

    from bench.common import set_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add bf16 + static + compile")
    args = parser.parse_args()
    set_threads(args.threads)
    variants = [
        ("float32 eager", "float32", False, False),
        ("bf16 eager", "bfloat16", False, False),
        ("bf16 static cache", "bfloat16", True, False),
    ]
    if args.compile:
        variants.append(("bf16 static + compile", "bfloat16", True, True))
    with model_dir(args.model) as path:
        tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
        models = {}
        for _name, dtype, _static, compiled in variants:
            key = (dtype, compiled)
            if key not in models:
                models[key] = load(path, dtype, compiled)
        batches = [int(b) for b in args.batch.split(",")]
        speeds: dict[tuple[str, int], list[float]] = {}
        for batch in batches:
            for _name, dtype, static, compiled in variants:  # warm-up: every shape once
                tokens_per_s(models[dtype, compiled], tokenizer, batch, args.tokens, static)
            for _ in range(args.rounds):
                for name, dtype, static, compiled in variants:
                    model = models[dtype, compiled]
                    run = tokens_per_s(model, tokenizer, batch, args.tokens, static)
                    speeds.setdefault((name, batch), []).append(run)
                    print(f"  {name} batch {batch}: {run:.1f} tok/s", file=sys.stderr)
    rows = []
    for batch in batches:
        base = median(speeds["bf16 eager", batch])
        for name, *_ in variants:
            mid = median(speeds[name, batch])
            rows.append([name, str(batch), fmt(mid), f"{mid / base:.2f}x"])
    notes = [f"{args.rounds} rounds, {args.tokens} tokens, {args.threads} threads, greedy"]
    header = ["variant", "batch", "tok/s", "x bf16 eager"]
    print_table("Decode levers (generate)", header, rows, notes)


if __name__ == "__main__":
    main()
