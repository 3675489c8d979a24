"""Memory: the server's resident memory (RSS) after loading one model and serving 100
requests through three routes (/v1, LangServe /models/{name}, and a chain) is one copy of
the weights, not one per route.

    python bench/memory.py [--model NAME|DIR] [--requests 100] [--threads 1]

The server (`chatbot.api.app:create_app` under uvicorn) runs in its own process, with the
model entry marked `lazy` so that it loads on the first request: RSS is read from
/proc/<pid>/status before loading (torch and transformers already imported), after
loading and after the requests. The default
model is a small random one (hidden 768, 6 layers, ~170 MB of float32 weights) so that
the weights dominate the noise; `--model` takes a registry name or a directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_model_args,
    free_port,
    messages,
    model_dir,
    print_table,
    registry_for,
    server,
    set_threads,
)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(
        f.stat().st_size for f in path.glob("*.bin")
    )


@contextlib.contextmanager
def small_model(model: str | None):
    if model:
        with model_dir(model) as path:
            yield path
        return
    from chatbot.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        yield build_tiny_model(Path(tmp) / "small", hidden_size=768, num_heads=12, num_layers=6)


async def serve_requests(base: str, name: str, total: int, max_tokens: int) -> dict[str, int]:
    import httpx

    routes = {
        "/v1/chat/completions": 0,
        f"/models/{name}/invoke": 0,
        "/chains/conversation/invoke": 0,
    }
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def one(i: int) -> None:
            route = list(routes)[i % 3]
            if route.startswith("/v1"):
                body = {"model": name, "messages": messages(i), "max_tokens": max_tokens}
            elif route.startswith("/models"):
                text = messages(i)[0]["content"]  # LangServe's message format
                body = {"input": [{"type": "human", "content": text}], "config": {}, "kwargs": {}}
            else:
                body = {
                    "input": {
                        "input": messages(i)[0]["content"],
                        "session_id": f"bench-{i}",
                        "model": name,
                    }
                }
            reply = await client.post(route, json=body)
            if reply.status_code != 200:
                raise RuntimeError(f"{route}: {reply.status_code} {reply.text[:300]}")
            routes[route] += 1

        for start in range(0, total, 8):  # 8 at a time: the batching path is exercised too
            await asyncio.gather(*(one(i) for i in range(start, min(start + 8, total))))
    return routes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    set_threads(args.threads)
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(small_model(args.model))
        name = stack.enter_context(registry_for(path, lazy=True, max_tokens=args.max_tokens))
        weights = weights_bytes(path)
        # glibc gives each thread its own malloc arena; MALLOC_ARENA_MAX=2 shows how much
        # of the growth is allocator caching rather than live data.
        runs = {
            variant: measure(name, args, env)
            for variant, env in (("default", {}), ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"}))
        }
    report(runs, weights, args)


def measure(name: str, args: argparse.Namespace, extra_env: dict[str, str]) -> dict:
    from chatbot.settings import get_settings

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Libraries are imported before the baseline: it is the model's memory we measure.
    start = (
        "import torch, transformers, uvicorn, model_adapters.transformers.runtime, chains.serving;"
        "from transformers import AutoModelForCausalLM, AutoTokenizer;"
        f"uvicorn.run('chatbot.api.app:create_app', factory=True, port={port},"
        " log_level='warning')"
    )
    env = {"CHATBOT_CONFIG": str(get_settings().config), **extra_env}
    with server([sys.executable, "-c", start], f"{base}/health", "bench-memory", env) as proc:
        before = rss_bytes(proc.pid)
        asyncio.run(serve_requests(base, name, 1, args.max_tokens))  # loads the model
        loaded = rss_bytes(proc.pid)
        counts = asyncio.run(serve_requests(base, name, args.requests, args.max_tokens))
        after = rss_bytes(proc.pid)
    return {"before": before, "loaded": loaded, "after": after, "counts": counts}


def report(runs: dict[str, dict], weights: int, args: argparse.Namespace) -> None:
    mib = 1024 * 1024
    rows = [["weights on disk", "", f"{weights / mib:.1f}", "1.00"]]
    for variant, r in runs.items():
        rows += [
            [variant, "RSS before loading (libraries imported)", f"{r['before'] / mib:.1f}", ""],
            [
                variant,
                "after loading, + vs before",
                f"{(r['loaded'] - r['before']) / mib:+.1f}",
                f"{(r['loaded'] - r['before']) / weights:.2f}",
            ],
            [
                variant,
                f"after {args.requests} requests, + vs before",
                f"{(r['after'] - r['before']) / mib:+.1f}",
                f"{(r['after'] - r['before']) / weights:.2f}",
            ],
        ]
    counts = next(iter(runs.values()))["counts"]
    notes = ["requests per route: " + ", ".join(f"{r} {n}" for r, n in counts.items())]
    for variant, r in runs.items():
        copies = (r["after"] - r["before"]) / weights
        verdict = "met" if copies < 2 else "NOT met"
        notes.append(
            f"target one copy of the weights ({variant}): (after - before) / weights = "
            f"{copies:.2f} ({verdict}: < 2; a copy per route would be >= 3)"
        )
    notes.append(f"torch threads={args.threads}; model={args.model or 'small random (built)'}")
    print_table(
        "Memory: one model served through 3 routes (server RSS)",
        ["server", "measure", "MiB", "x weights"],
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
