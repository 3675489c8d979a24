"""A small real OpenAI-compatible HTTP server for tests, with fault injection.

`Upstream(name)` serves /v1/chat/completions (plain and SSE streaming, with usage),
/v1/embeddings (float and base64) and the Azure path /openai/deployments/{d}/...
on a free 127.0.0.1 port from a background thread. Set `upstream.fault` at any time:

- "none": answer normally: "<name> says: <last user text>" (cut to max_tokens words)
- "400" / "429" / "500" / "503": that HTTP status with OpenAI's error JSON
- "hang": sleep `hang_s` before answering (a client timeout should fire first)
- "drop": send the status line, then close the connection before any body
- "drop-mid-stream": stream `drop_after` chunks, then drop the connection

Every request is recorded in `upstream.requests` (path, query, headers, body).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

Fault = Literal["none", "400", "429", "500", "503", "hang", "drop", "drop-mid-stream"]
DIM = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_url() -> str:
    """A loopback URL where nothing listens (connect is refused at once)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:DIM]]


class _Dropped(Exception):
    """Raised inside a handler to make uvicorn abort the connection."""


@dataclass
class Upstream:
    name: str = "up"
    fault: Fault = "none"
    hang_s: float = 30.0
    drop_after: int = 2
    delay_s: float = 0.0  # per response, to keep requests in flight
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        self.port = free_port()
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            timeout_graceful_shutdown=1,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"upstream {self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    # --- the app ---------------------------------------------------------------------

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        @app.post("/openai/deployments/{deployment}/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._chat(await self._record(request))

        @app.post("/v1/embeddings")
        @app.post("/openai/deployments/{deployment}/embeddings")
        async def embeddings(request: Request) -> Response:
            body = await self._record(request)
            if (error := await self._fault_response()) is not None:
                return error
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = []
            for i, text in enumerate(texts):
                vec = fake_vector(str(text))
                if body.get("encoding_format") == "base64":
                    packed = base64.b64encode(struct.pack(f"<{DIM}f", *vec)).decode()
                    data.append({"object": "embedding", "index": i, "embedding": packed})
                else:
                    data.append({"object": "embedding", "index": i, "embedding": vec})
            tokens = sum(len(str(t).split()) for t in texts)
            return JSONResponse(
                {
                    "object": "list",
                    "model": body.get("model", ""),
                    "data": data,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )

        return app

    async def _record(self, request: Request) -> dict[str, Any]:
        # Recorded in the handler: a middleware would swallow the injected connection drops.
        body = await request.json()
        self.requests.append(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "body": body,
            }
        )
        return body

    async def _fault_response(self) -> Response | None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fault.isdigit():
            code = int(self.fault)
            kind = {400: "invalid_request_error", 429: "rate_limit_exceeded"}.get(
                code, "server_error"
            )
            msg = f"{self.name}: injected {code}"
            return JSONResponse({"error": {"message": msg, "type": kind}}, status_code=code)
        if self.fault == "hang":
            await asyncio.sleep(self.hang_s)
        if self.fault == "drop":
            # Headers go out, then the body aborts: the client sees a broken connection.
            return StreamingResponse(self._dropping(), media_type="application/json")
        return None

    async def _dropping(self):
        raise _Dropped(self.name)
        yield b""  # makes this an async generator

    def reply_words(self, body: dict[str, Any]) -> list[str]:
        last = next((m for m in reversed(body.get("messages", [])) if m.get("role") == "user"), {})
        content = last.get("content", "")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        words = f"{self.name} says: {content}".split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = words[: int(limit)] if limit else words
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        text = " ".join(words)
        for stop in stops:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text.split(" ") if text else []

    async def _chat(self, body: dict[str, Any]) -> Response:
        stream = bool(body.get("stream"))
        if (error := await self._fault_response()) is not None:
            return error
        words = self.reply_words(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        base = {
            "id": f"chatcmpl-{self.name}",
            "created": int(time.time()),
            "model": body.get("model", self.name),
        }
        if not stream:
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": " ".join(words)},
                        }
                    ],
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._sse(base, words, usage, include_usage), media_type="text/event-stream"
        )

    async def _sse(self, base: dict, words: list[str], usage: dict, include_usage: bool):
        def event(delta: dict, finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        yield event({"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            if self.fault == "drop-mid-stream" and i >= self.drop_after:
                raise _Dropped(self.name)
            yield event({"content": word if i == 0 else " " + word})
            await asyncio.sleep(0)
        yield event({}, "stop")
        if include_usage:
            chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"


@contextmanager
def registry_with(
    models: dict[str, dict[str, Any]] | None = None,
    embeddings: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Any]:
    """The session's registry plus extra entries, process-wide for the block, as a user's
    YAML would be; the previous registry (and its loaded engines) is restored after."""
    import chatbot
    from chatbot.registry import parse_registry
    from chatbot.settings import get_settings

    settings = get_settings()
    old = chatbot.get_registry()
    data = yaml.safe_load(Path(settings.config).read_text()) or {}
    data.setdefault("models", {}).update(models or {})
    data["embeddings"] = {**(data.get("embeddings") or {}), **(embeddings or {})}
    chatbot.set_registry(parse_registry(data, settings.models_root, source="test.yaml"))
    try:
        yield chatbot.get_registry()
    finally:
        chatbot.set_registry(old)  # unloads the entries added here
