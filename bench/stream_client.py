"""One streaming OpenAI chat client for every server in bench/engines.py.

Per request it records the time to the first content token (TTFT), the gaps between
content chunks (inter-token latency), and the completion tokens: the server's usage when
it sends one, else the streamed text re-tokenized with the model's tokenizer (llama.cpp's
server sends no usage in streams).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import messages, percentile


@dataclass
class Stats:
    tokens: int = 0
    wall: float = 0.0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        return {
            "tok_s": self.tokens / self.wall if self.wall else float("nan"),
            "ttft_p50": percentile(self.ttft, 0.5),
            "itl_p95": percentile(self.gaps, 0.95),
            "errors": self.errors,
        }


class StreamClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        max_tokens: int,
        tokenizer: Any,
        timeout: float = 300.0,
        messages: Any = messages,
    ) -> None:
        import httpx

        self.model, self.max_tokens, self.tokenizer = model, max_tokens, tokenizer
        self.messages = messages  # i -> the chat messages of request i
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        # `timeout` bounds each read: a stalled stream fails instead of hanging the run.
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)

    async def one(self, i: int, stats: Stats) -> None:
        body = {
            "model": self.model,
            "messages": self.messages(i),
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        last, text, usage = None, "", None
        ttft, gaps = None, []
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                await reply.aread()
                raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            async for line in reply.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if not piece:
                        continue
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - start
                    else:
                        gaps.append(now - last)
                    last = now
                    text += piece
        if usage and usage.get("completion_tokens"):
            tokens = int(usage["completion_tokens"])
        else:
            tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
        stats.tokens += tokens
        if ttft is not None:
            stats.ttft.append(ttft)
        stats.gaps.extend(gaps)

    async def run(self, concurrency: int, total: int) -> Stats:
        """`concurrency` clients sending requests back to back, `total` in all."""
        await self.one(0, Stats())  # warm-up: connection, first-call allocations
        stats = Stats()
        counter = iter(range(total))

        async def worker() -> None:
            for i in counter:
                try:
                    await self.one(i, stats)
                except Exception:  # noqa: BLE001 - a cut stream counts as an error
                    stats.errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats.wall = time.perf_counter() - start
        return stats

    async def close(self) -> None:
        await self.client.aclose()
