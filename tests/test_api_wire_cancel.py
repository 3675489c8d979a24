"""A client hanging up mid-stream on /v1/responses or /v1/messages cancels the
generation (the same path as the chat route), and the request counts as cancelled in
the metrics under its own endpoint."""

from __future__ import annotations

import time

import httpx
import pytest

from chatbot import factory


def wait_until(check, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    ("path", "body", "endpoint"),
    [
        ("/v1/responses", {"input": "hi", "max_output_tokens": 1000, "store": False}, "responses"),
        (
            "/v1/messages",
            {"max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]},
            "messages",
        ),
    ],
)
def test_hang_up_cancels_generation(server_url, path, body, endpoint):
    stats = factory.get_engine("tiny").runtime.stats
    cancelled, generated = stats.cancelled, stats.generated_tokens
    with httpx.Client(base_url=server_url, timeout=60) as http:
        with http.stream("POST", path, json={"model": "tiny", "stream": True, **body}) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 6:
                    break  # hang up mid-stream
    assert wait_until(lambda: stats.cancelled > cancelled, 30), "generation was not cancelled"
    assert stats.generated_tokens - generated < 1000
    metrics = httpx.get(f"{server_url}/metrics").text
    label = f'endpoint="{endpoint}",model="tiny",outcome="cancelled"'
    assert f"chatbot_model_requests_total{{{label}}}" in metrics
