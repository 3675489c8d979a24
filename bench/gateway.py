"""Gateway: our server proxying an OpenAI-compatible upstream against LiteLLM's proxy
pointed at the same fast loopback upstream, measured side by side in one run.

  load:     64 concurrent clients send a fixed count of chat requests: requests/s, p50/p99
  latency:  one client, requests one after another: p50/p99 added over calling the
            upstream directly (what the proxy itself costs a request)

Targets: requests/s >= 2x LiteLLM's; p50 added latency <= 2 ms.

    python bench/gateway.py [--requests 3000] [--concurrency 64] [--litellm PATH]

LiteLLM is not a dependency of this project; install it in its own virtualenv:
    python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
(skipped if that executable is missing). Both proxies run as one uvicorn process each.
`--model` is accepted for symmetry with the other scripts but unused: no model is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_model_args,
    free_port,
    percentile,
    print_table,
    server,
)

KEY = "sk-bench-0123456789abcdef0123456789abcdef"  # both proxies check the same bearer key
BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


async def load(url: str, model: str, concurrency: int, total: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    counter = iter(range(min(concurrency, 20)))  # warm-up first
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            for _ in counter:
                start = time.perf_counter()
                async with session.post(url, json={**BODY, "model": model}) as reply:
                    await reply.read()
                    if reply.status != 200:
                        raise RuntimeError(f"{url}: HTTP {reply.status}: {await reply.text()}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(client() for _ in range(min(concurrency, 20))))
        latencies.clear()
        counter = iter(range(total))
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "rps": total / wall,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


def proxies(stack: contextlib.ExitStack, up: str, litellm: str) -> dict[str, tuple[str, str]]:
    """Start our server and LiteLLM's proxy in front of `up`; name -> (url, model)."""
    import yaml

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gw-")))
    ours = tmp / "models.yaml"
    entry = {"provider": "openai", "model": "up-model", "base_url": f"{up}/v1", "api_key": "x"}
    ours.write_text(yaml.safe_dump({"models": {"up": entry}}))
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
    env = {
        "CHATBOT_CONFIG": str(ours),
        "CHATBOT_MODELS_ROOT": str(tmp),
        "CHATBOT_DATA_DIR": str(tmp),
        "CHATBOT_API_KEYS": KEY,
    }
    stack.enter_context(server(cmd, f"http://127.0.0.1:{port}/ready", "bench-gw-ours", env))
    found = {"ours": (f"http://127.0.0.1:{port}/v1/chat/completions", "up")}
    if Path(litellm).exists():
        config = tmp / "litellm.yaml"
        params = {"model": "openai/up-model", "api_base": f"{up}/v1", "api_key": "x"}
        config.write_text(
            yaml.safe_dump({"model_list": [{"model_name": "up", "litellm_params": params}]})
        )
        port = free_port()
        cmd = [
            litellm,
            "--config",
            str(config),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--num_workers",
            "1",
        ]
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": KEY,
        }
        stack.enter_context(
            server(cmd, f"http://127.0.0.1:{port}/health/liveliness", "bench-gw-litellm", env)
        )
        found["LiteLLM"] = (f"http://127.0.0.1:{port}/v1/chat/completions", "up")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm")
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

    with contextlib.ExitStack() as stack:
        port = free_port()
        up = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, str(Path(__file__).with_name("fast_upstream.py")), str(port)]
        stack.enter_context(server(cmd, f"{up}/health", "bench-gw-upstream"))
        targets = {"direct (no proxy)": (f"{up}/v1/chat/completions", "up-model")}
        targets.update(proxies(stack, up, args.litellm))
        loaded: dict[str, dict] = {}
        single: dict[str, dict] = {}
        loop = asyncio.new_event_loop()
        for name, (url, model) in targets.items():  # phase by phase, systems back to back
            loaded[name] = loop.run_until_complete(
                load(url, model, args.concurrency, args.requests)
            )
        for name, (url, model) in targets.items():
            single[name] = loop.run_until_complete(load(url, model, 1, args.latency_requests))
        loop.close()
    report(loaded, single, args)


def report(loaded: dict, single: dict, args: argparse.Namespace) -> None:
    direct = "direct (no proxy)"
    rows = []
    for name in loaded:
        lo, si = loaded[name], single[name]
        added50 = (si["p50"] - single[direct]["p50"]) * 1000
        added99 = (si["p99"] - single[direct]["p99"]) * 1000
        vs = loaded.get("LiteLLM")
        rows.append(
            [
                name,
                f"{lo['rps']:.0f}",
                f"{lo['p50'] * 1000:.1f}",
                f"{lo['p99'] * 1000:.1f}",
                f"{si['p50'] * 1000:.2f}",
                f"{si['p99'] * 1000:.2f}",
                "" if name == direct else f"{added50:+.2f}",
                "" if name == direct else f"{added99:+.2f}",
                f"{lo['rps'] / vs['rps']:.2f}x" if vs and name != direct else "",
            ]
        )
    header = [
        "target",
        "req/s @64",
        "p50 ms @64",
        "p99 ms @64",
        "p50 ms @1",
        "p99 ms @1",
        "added p50 ms",
        "added p99 ms",
        "req/s vs LiteLLM",
    ]
    notes = [
        f"load: {args.requests} requests from {args.concurrency} concurrent clients; "
        f"latency: {args.latency_requests} requests from 1 client (aiohttp)"
    ]
    if "LiteLLM" in loaded:
        ratio = loaded["ours"]["rps"] / loaded["LiteLLM"]["rps"]
        notes.append(
            f"target req/s >= 2x LiteLLM: {ratio:.2f}x ({'met' if ratio >= 2 else 'NOT met'})"
        )
    else:
        notes.append(f"LiteLLM not found at {args.litellm}: skipped")
    added = (single["ours"]["p50"] - single[direct]["p50"]) * 1000
    notes.append(
        f"target added p50 <= 2 ms (1 client): {added:+.2f} ms "
        f"({'met' if added <= 2 else 'NOT met'})"
    )
    print_table("Gateway: proxying a loopback OpenAI-compatible upstream", header, rows, notes)


if __name__ == "__main__":
    main()
