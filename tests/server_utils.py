"""Run an ASGI app under a real uvicorn server on a free 127.0.0.1 port, in a thread.

    with start_server(create_app()) as base_url:
        httpx.get(f"{base_url}/health")

The server shares this process (and so the loaded models) with the test.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 120.0, headers: dict[str, str] | None = None) -> None:
    """Poll `url` until it answers 200."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, headers=headers, timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last!r})")


@contextmanager
def start_server(
    app: Any,
    host: str = "127.0.0.1",
    wait_ready: bool = False,
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[str]:
    """Serve `app` until the block ends; yields the base URL (http://127.0.0.1:PORT).

    The socket is bound before the server starts, so the port cannot be taken in
    between. `wait_ready` waits for /ready too (models loaded); `headers` go with it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # records go to the root logger (and to pytest's caplog)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    base_url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        if wait_ready:
            wait_for(f"{base_url}/ready", timeout, headers)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def sse_payloads(text: str) -> list:
    """`data:` payloads of an SSE body, in order (the last must be [DONE])."""
    events = [block for block in text.split("\n\n") if block.strip()]
    out = []
    for block in events:
        lines = [ln for ln in block.split("\n") if ln.startswith("data: ")]
        assert lines, f"event without data: {block!r}"
        out.append(lines[0][len("data: ") :])
    return out
