"""Chunked prefill in the transformers runtime: inter-token latency of running streams
while a long prompt (2,000 tokens) joins, chunking off and on, side by side in one run
(same loaded model; the prefix cache is off so every long prompt is prefilled in full).

Per mode, after one warm-up round each: `--streams` greedy streams start; once all are
streaming, a new request with a long prompt arrives. Printed: the running streams'
inter-token p95 and max while the long prompt is prefilled (from its arrival to its first
token), their p95 outside that window, and the long prompt's own time to first token.

    python bench/chunked_prefill.py [--model smol] [--threads 2] [--prompt-tokens 2000]
        [--streams 4] [--chunk 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_model_args, fmt, model_dir, percentile, print_table, set_threads  # noqa: E402

WORDS = "the history of the river valley, its towns, farms, bridges and markets. "


async def one_round(runtime, tok, tokens: int, streams: int, tag: str) -> dict:
    from model_adapters.generation import GenerationRequest, stream_async

    def request(prompt: list[int], max_tokens: int) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt, max_tokens=max_tokens, temperature=0)

    times: list[list[float]] = [[] for _ in range(streams)]
    started = [asyncio.Event() for _ in range(streams)]

    async def running(i: int) -> None:
        prompt = tok.encode(f"story {i}: once upon a time", add_special_tokens=False)
        async for _ in stream_async(runtime.submit, request(prompt, 10_000)):
            times[i].append(time.perf_counter())
            started[i].set()
            if done.is_set():
                break

    done = asyncio.Event()
    tasks = [asyncio.create_task(running(i)) for i in range(streams)]
    for event in started:
        await event.wait()
    await asyncio.sleep(0.5)  # some steady-state gaps before the long prompt
    ids = tok.encode(f"{tag} " + WORDS * (tokens // 10), add_special_tokens=False)[:tokens]
    arrived = time.perf_counter()
    first = None
    async for _ in stream_async(runtime.submit, request(ids, 1)):
        first = first or time.perf_counter()
    await asyncio.sleep(0.5)
    done.set()
    await asyncio.gather(*tasks)
    during, outside = [], []
    for ts in times:
        for prev, now in zip(ts, ts[1:], strict=False):
            (during if now >= arrived and prev <= first else outside).append(now - prev)
    return {"during": during, "outside": outside, "ttft": first - arrived}


def main() -> None:
    from model_adapters.transformers.chunked import ChunkedPrefill
    from model_adapters.transformers.runtime import HFRuntime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="long prompts per mode")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    set_threads(args.threads)
    stats = {"off": {"during": [], "outside": [], "ttft": []}, "on": None}
    stats["on"] = {k: [] for k in stats["off"]}
    with model_dir(args.model) as path:
        runtime = HFRuntime(path, device="cpu", dtype=args.dtype, max_batch_size=args.streams + 1)
        chunked = ChunkedPrefill(
            args.chunk, runtime.model, runtime.pad_id, runtime.device, runtime._logits_to_keep
        )
        runtime.prefix_cache = None
        try:
            tok = runtime.tokenizer
            for r in range(-1, args.rounds):  # round -1: warm-up (new shapes), not counted
                for mode in ("off", "on"):
                    runtime._chunked = chunked if mode == "on" else None
                    out = asyncio.run(
                        one_round(runtime, tok, args.prompt_tokens, args.streams, f"{mode}{r}")
                    )
                    if r < 0:
                        continue
                    for key in ("during", "outside"):
                        stats[mode][key].extend(out[key])
                    stats[mode]["ttft"].append(out["ttft"])
                    print(
                        f"  {mode} round {r}: long-prompt TTFT {out['ttft']:.2f}s", file=sys.stderr
                    )
        finally:
            runtime.close()
    rows = []
    for mode, s in stats.items():
        rows.append(
            [mode, fmt(percentile(s["during"], 0.95) * 1000, 0),
             fmt(max(s["during"], default=float("nan")) * 1000, 0),
             fmt(percentile(s["outside"], 0.95) * 1000, 0),
             fmt(percentile(s["ttft"], 0.5) * 1000, 0)]
        )  # fmt: skip
    header = ["chunked prefill", "ITL p95 ms while joining", "ITL max ms", "ITL p95 ms otherwise",
              "long prompt TTFT ms"]  # fmt: skip
    notes = [
        f"{args.streams} running streams, a {args.prompt_tokens}-token prompt joins, "
        f"{args.rounds} rounds per mode, chunk {args.chunk}, {args.threads} threads, "
        f"dtype {args.dtype}",
    ]
    print_table("Chunked prefill: running streams while a long prompt joins", header, rows, notes)


if __name__ == "__main__":
    main()
