"""Graceful shutdown of a real `chatbot serve` process: SIGTERM stops accepting new
connections, lets an in-flight stream finish (up to `shutdown_grace`), and exits 0;
past the grace period what is left ends with an error event and [DONE], and the process
still exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.server_utils import free_port, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@contextmanager
def serve(
    registry_file: Path, models_root: Path, grace: float, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    env = {
        **os.environ,
        "CHATBOT_MODELS_ROOT": str(models_root),
        "CHATBOT_SHUTDOWN_GRACE": str(grace),
        "CHATBOT_API_KEYS": "",
        "OMP_NUM_THREADS": "1",
        "CHATBOT_DATA_DIR": str(tmp_path / "data"),
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatbot.cli",
                "serve",
                "--config",
                str(registry_file),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-m",
                "tiny",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/ready", timeout=180)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


class Stream(threading.Thread):
    """One streaming chat request, read to its end in the background."""

    def __init__(self, url: str, max_tokens: int, n: int = 1) -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens, self.n = url, max_tokens, n
        self.ended = 0.0
        self.started = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": self.max_tokens,
            "n": self.n,
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST", f"{self.url}/v1/chat/completions", json=body, timeout=120
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[len("data: ") :])
                        self.started.set()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self.started.set()

    def finish_reason(self) -> str | None:
        reasons = [
            c.get("finish_reason")
            for e in self.events
            if e != "[DONE]"
            for c in json.loads(e).get("choices", [])
        ]
        return next((r for r in reversed(reasons) if r), None)

    def finished_choices(self) -> int:
        return sum(
            1
            for e in self.events
            if e != "[DONE]"
            for c in json.loads(e).get("choices", [])
            if c.get("finish_reason")
        )


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_lets_the_stream_finish_and_exits_0(registry_file, models_root, tmp_path):
    with serve(registry_file, models_root, grace=60, tmp_path=tmp_path) as (proc, url, log):
        stream = Stream(url, max_tokens=1000, n=8)  # 8 x 1000 tokens, one after another
        stream.start()
        assert stream.started.wait(60) and stream.events, stream.error
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        # New connections are refused while the stream goes on.
        deadline = time.monotonic() + 10
        while not refused(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert refused(url), "still accepting after SIGTERM"
        refused_at = time.monotonic()
        assert proc.wait(timeout=90) == 0, log.read_text()[-2000:]
        stream.join(timeout=30)
    assert stream.error is None, stream.error
    assert stream.events[-1] == "[DONE]"
    assert stream.finish_reason() == "length"  # all of its tokens, not cut short
    assert len(stream.events) > 1000
    assert stream.ended > refused_at  # it went on after the server stopped accepting
    assert time.monotonic() - sent < 90


def test_past_the_grace_period_streams_are_cut_and_it_still_exits_0(
    registry_file, models_root, tmp_path
):
    with serve(registry_file, models_root, grace=1, tmp_path=tmp_path) as (proc, url, log):
        stream = Stream(url, max_tokens=1000, n=16)
        stream.start()
        assert stream.started.wait(60) and stream.events, stream.error
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
        waited = time.monotonic() - started
        stream.join(timeout=30)
    assert waited < 15, waited  # about the 1 s grace, not the stream's length
    # It did not get to finish: a fast machine may end the first of the 16 choices within
    # the grace second, but not all of them.
    assert stream.finished_choices() < 16
    # But it ends cleanly: a final error event saying why, then [DONE]; and the log has
    # no CancelledError tracebacks.
    assert stream.error is None, stream.error
    assert stream.events[-1] == "[DONE]", stream.events[-3:]
    error = json.loads(stream.events[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]
    assert "ending 1 open request" in text


STORY = [{"role": "user", "content": "tell me a story"}]
CUT_STREAMS = {  # path, body, an event of the stream's middle
    "anthropic": ("/v1/messages", {"messages": STORY, "max_tokens": 500}, "content_block_delta"),
    "responses": (
        "/v1/responses",
        {"input": STORY, "max_output_tokens": 500},
        "response.output_text.delta",
    ),
}


@pytest.mark.parametrize("wire", list(CUT_STREAMS))
def test_a_stream_cut_at_shutdown_ends_with_its_wire_formats_error_event(_registry, wire):
    """Anthropic Messages and OpenAI Responses streams (named events, no [DONE]) end with
    their own `error` event. In process, gated: the worker is held after its first
    steps, so the stream is open (its first events sent) when the drain cuts it."""
    from chatbot import factory
    from chatbot.api.app import create_app
    from tests.server_utils import start_server

    app = create_app(show_progress=False)

    @app.post("/test/grace-over")  # on the server's loop, as the grace period's end runs
    async def grace_over() -> None:
        app.state.chatbot.drain.close_all()

    runtime = factory.get_engine("tiny").runtime
    real_step, steps, release = runtime._step, threading.Semaphore(0), threading.Event()

    def step() -> None:  # two steps run (the first text is out), then the worker waits
        if not steps.acquire(blocking=False):
            release.wait(60)
        real_step()

    steps.release(2)
    runtime._step = step
    path, body, middle = CUT_STREAMS[wire]
    body = {"model": "tiny", "stream": True, **body}
    lines: list[str] = []
    try:
        with (
            start_server(app) as url,
            httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as response,
        ):
            for line in response.iter_lines():
                lines.append(line)
                if line == f"event: {middle}" and lines.count(line) == 1:
                    httpx.post(f"{url}/test/grace-over", timeout=30)
            release.set()  # the cut generation may end now, before the server stops
    finally:
        release.set()
        del runtime._step
    lines = [line for line in lines if line]
    assert response.status_code == 200 and lines[-2] == "event: error", lines[-6:]
    assert "[DONE]" not in "".join(lines)  # not OpenAI chat's end marker
    error = json.loads(lines[-1].removeprefix("data: "))
    if wire == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "overloaded_error", error
    else:
        from tests.responses_schema import validate_event

        validate_event(error)
        assert error["code"] == "server_shutting_down", error
        numbers = [json.loads(x[6:])["sequence_number"] for x in lines if x.startswith("data: ")]
        assert numbers == list(range(len(numbers))), numbers  # it numbers on from the last
