"""A minimal, fast OpenAI-compatible upstream for bench/gateway.py (plain asyncio, no
framework), so that the proxies' own cost dominates what the gateway benchmark measures.

    python bench/fast_upstream.py PORT

Answers POST .../chat/completions with a fixed completion (keep-alive, HTTP/1.1) and any
GET with 200 (health); `"stream": true` gets an SSE stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello from the upstream"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
).encode()


def _events() -> bytes:
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "up-model",
    }
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        *(
            {**base, "choices": [{"index": 0, "delta": {"content": w}}]}
            for w in ["hello", " from", " the", " upstream"]
        ),
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        },
    ]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def _response(body: bytes, content_type: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


RESPONSE = _response(BODY, "application/json")
# A whole SSE stream in one body: the proxies' clients parse it like any stream.
STREAM = _response(_events(), "text/event-stream")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            streaming = b'"stream":true' in body.replace(b" ", b"")
            writer.write(STREAM if streaming else RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
