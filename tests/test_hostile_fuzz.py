"""A property-based fuzzer over every route of a real server (issue 17; the session's
uvicorn server, in this process, so RSS is this process's):
schemathesis generates valid (positive) and invalid (negative) requests for each
operation of our /openapi.json. Across the run: no 5xx, no crash (the process is alive
at the end and /health answers), no response slower than a generous bound while the
server is otherwise idle (requests go one at a time), and the server's RSS stays bounded.

The run prints its counts: cases tried, 5xx, stalls over 1 s, crashes, RSS growth.
Generation lengths are capped (max_tokens <= 8, n <= 2) so the run measures the server,
not how fast a tiny model writes 1000 tokens on a loaded machine.
"""

from __future__ import annotations

import collections
import json
import time

import httpx
import hypothesis
import hypothesis.errors
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

EXAMPLES = 2  # per operation and mode
STALL = 1.0  # seconds: counted and reported
BOUND = 30.0  # seconds: no single request may take longer (a generous bound on busy CI)
# Bytes of growth across the run. Fuzzed requests may load the lazy real model (`smol`,
# ~540 MB of float32 weights) the first time they name it: that is loading, not a leak.
RSS_BOUND = 1024 * 2**20


def _cap(case: schemathesis.Case) -> None:
    body = case.body
    if isinstance(body, dict):
        for key, most in (("max_tokens", 8), ("max_completion_tokens", 8), ("n", 2)):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > most:
                body[key] = most


def _problem(status: int, text: str, content_type: str) -> str | None:
    if status >= 500:
        return f"{status}: {text[:300]}"
    if status >= 400:
        try:
            body = json.loads(text)
            error = body["error"]
            if body.get("type") == "error":  # /v1/messages answers in Anthropic's form
                assert {"message", "type"} <= set(error)
            else:
                assert {"message", "type", "param", "code"} <= set(error)
        except Exception as exc:  # noqa: BLE001 - reported with the response
            return f"{status} not in OpenAI error form ({exc!r}): {text[:300]}"
    if content_type.startswith("text/event-stream") and '"status_code": 5' in text:
        return f"stream with a server error: {text[-300:]}"
    return None


@pytest.mark.timeout(1200)  # ~4 cases per route, on 2 busy cores
def test_fuzz_every_route_positive_and_negative(server_url, caplog):
    url = server_url
    server = psutil.Process()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    statuses: collections.Counter[int] = collections.Counter()
    slow: list[tuple[float, str]] = []
    problems: list[str] = []
    crashes = 0
    started = time.monotonic()

    def fuzz(op: schemathesis.APIOperation, mode: GenerationMode) -> None:
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=op.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            nonlocal crashes
            _cap(case)
            sent = time.monotonic()
            try:
                response = case.call(timeout=BOUND + 30)
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a crash
                crashes += 1
                problems.append(f"{op.label} {mode.value}: no response ({exc!r})")
                return
            elapsed = time.monotonic() - sent
            statuses[response.status_code] += 1
            if elapsed > STALL:
                slow.append((elapsed, f"{op.label} {response.status_code}"))
            content_type = response.headers.get("content-type") or [""]
            problem = _problem(response.status_code, response.text, content_type[0])
            if problem:
                problems.append(f"{op.label} {mode.value} {case.body!r:.200}: {problem}")

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            no_negative.append(op.label)  # nothing in it can be invalid (GET /health)

    no_negative: list[str] = []
    rss_before = None
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(op, mode)
        if rss_before is None:  # after the first operation: the models are warm
            rss_before = server.memory_info().rss
    rss_after = server.memory_info().rss
    alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
    crashes += 0 if alive else 1
    sent = sum(statuses.values())
    five = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nhostile fuzz: {len(operations)} operations, {sent} cases in "
        f"{time.monotonic() - started:.0f}s; statuses {dict(sorted(statuses.items()))}; "
        f"5xx {five}; stalls over {STALL:.0f}s {len(slow)} "
        f"(slowest {max(slow, default=(0.0, '-'))}); crashes {crashes}; "
        f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB "
        f"(+{(rss_after - rss_before) / 2**20:.0f} MB); "
        f"{len(no_negative)} operations without negative cases"
    )
    text = caplog.text
    assert not problems, "\n".join(problems[:20])
    assert five == 0 and crashes == 0, text[-3000:]
    assert sent >= 2 * len(operations)
    assert any(400 <= status < 500 for status in statuses)  # it did send bad input
    assert all(elapsed < BOUND for elapsed, _ in slow), sorted(slow)[-5:]
    assert rss_after - rss_before < RSS_BOUND
    assert "Traceback" not in text, text[-3000:]
