"""Serving overhead: our /v1 streaming endpoint against the same model's in-process
`astream`, measured side by side in one run (requests alternate between the two).

Reports, per request: tokens/s (completion tokens / request time) and time to first token.
Targets: HTTP tokens/s >= 0.95x in-process, added time to first token <= 10 ms.

    python bench/overhead.py [--model NAME|DIR] [--requests 20] [--max-tokens 64] [--threads 1]

The server (`chatbot.api.app:create_app` under uvicorn) runs in its own process with the
same registry entry and the same torch thread count; the in-process model is a second copy
in this process. Requests run one at a time, so neither side waits for the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_model_args,
    fmt,
    free_port,
    median,
    messages,
    model_dir,
    print_table,
    registry_for,
    server,
    set_threads,
)


async def in_process(model, i: int) -> tuple[float, float, int]:
    """(time to first token, total time, completion tokens) of one astream call."""
    start = time.perf_counter()
    first, tokens = None, 0
    async for chunk in model.astream(messages(i)):
        if chunk.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage_metadata:
            tokens = chunk.usage_metadata["output_tokens"]
    return first or float("nan"), time.perf_counter() - start, tokens


async def over_http(client, name: str, max_tokens: int, i: int) -> tuple[float, float, int]:
    body = {
        "model": name,
        "messages": messages(i),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return first or float("nan"), time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    set_threads(args.threads)

    with contextlib.ExitStack() as stack:
        path = stack.enter_context(model_dir(args.model))
        name = stack.enter_context(registry_for(path))
        import httpx

        import chatbot
        from chatbot.settings import get_settings

        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "chatbot.api.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        env = {"CHATBOT_CONFIG": str(get_settings().config)}
        stack.enter_context(server(cmd, f"http://127.0.0.1:{port}/ready", "bench-overhead", env))
        model = chatbot.get_chat_model(name, temperature=0, max_tokens=args.max_tokens)

        async def run() -> dict[str, list[tuple[float, float, int]]]:
            out: dict[str, list] = {"in-process astream": [], "/v1 streaming": []}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
                await in_process(model, 0)  # warm up both
                await over_http(c, name, args.max_tokens, 0)
                for i in range(args.requests):  # alternate: same machine load for both
                    out["in-process astream"].append(await in_process(model, i))
                    out["/v1 streaming"].append(await over_http(c, name, args.max_tokens, i))
            return out

        samples = asyncio.run(run())
    report(samples, args)


def report(samples: dict[str, list[tuple[float, float, int]]], args: argparse.Namespace) -> None:
    stats = {}
    for system, runs in samples.items():
        stats[system] = {
            "ttft": median([r[0] for r in runs]) * 1000,
            "tok_s": median([r[2] / r[1] for r in runs if r[1] > 0]),
            "tokens": sum(r[2] for r in runs),
        }
    ref, http = stats["in-process astream"], stats["/v1 streaming"]
    ratio = http["tok_s"] / ref["tok_s"]
    added = http["ttft"] - ref["ttft"]
    rows = [
        [
            system,
            fmt(s["tok_s"]),
            fmt(s["ttft"], 2),
            str(s["tokens"]),
            "1.00x" if system == "in-process astream" else f"{ratio:.2f}x",
            "" if system == "in-process astream" else f"{added:+.2f}",
        ]
        for system, s in stats.items()
    ]
    header = [
        "path",
        "tok/s (median)",
        "TTFT ms (median)",
        "tokens",
        "tok/s ratio",
        "added TTFT ms",
    ]
    notes = [
        f"{args.requests} requests each, alternating, one at a time; max_tokens="
        f"{args.max_tokens}; torch threads={args.threads}; model={args.model or 'tiny (built)'}",
        f"target tok/s ratio >= 0.95: {ratio:.2f}x ({'met' if ratio >= 0.95 else 'NOT met'})",
        f"target added TTFT <= 10 ms: {added:+.2f} ms ({'met' if added <= 10 else 'NOT met'})",
    ]
    print_table("Overhead: /v1 streaming vs in-process astream (same model)", header, rows, notes)


if __name__ == "__main__":
    main()
