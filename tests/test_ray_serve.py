"""`chatbot deploy` on a real local Ray cluster started here (ray.init, no dashboard).

Two replicas of the tiny model share the load; killing one mid-load loses no request that
had not started streaming and Ray Serve brings it back; a burst scales an autoscaling
deployment up within its bounds and down after; a model that needs more than the cluster
has is a clear error; the ingress has the routes, the auth and aggregated /metrics of
`chatbot serve`; replicas drain when the app is deleted. Ray picks the machine's address
for its own processes (it refuses loopback); the HTTP proxy binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install '.[ray]')")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed")

from chatbot.deploy import ray_serve  # noqa: E402
from chatbot.deploy.stats import hub_actor  # noqa: E402
from chatbot.registry import parse_registry  # noqa: E402
from chatbot.settings import Settings  # noqa: E402
from tests.server_utils import free_port, wait_for  # noqa: E402

KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY = {"path": "tiny-qwen2", "defaults": {"temperature": 0, "max_tokens": 8}}


@pytest.fixture(scope="module")
def cluster():
    try:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Ray cannot start on this machine: {exc}")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _deploy(models_root, models: dict, app: str, base: str, **settings) -> str:
    registry = parse_registry({"models": models}, models_root, source="<test>")
    port = int(base.rsplit(":", 1)[1])
    ray_serve.deploy(
        registry,
        Settings(api_keys=[KEY], shutdown_grace=30, **settings),
        app_name=app,
        port=port,
        timeout=300,
        ingress_cpus=0.25,
    )
    wait_for(f"{base}/ready", timeout=120, headers=AUTH)
    return base


def _snapshot(app: str) -> list[dict]:
    return ray.get(hub_actor(ray_serve.hub_name(app)).snapshot.remote())


def _running(app: str, deployment: str) -> int:
    status = serve.status().applications[app].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def _replicas(app: str, deployment: str) -> int:
    """Replicas Serve wants now: starting or running, not the ones stopping."""
    states = serve.status().applications[app].deployments[deployment].replica_states
    return sum(n for state, n in states.items() if state != "STOPPING")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"not {what} after {timeout}s")


async def _stream(client: httpx.AsyncClient, max_tokens: int, seen: asyncio.Event) -> dict:
    """One streamed chat completion: did it finish, and did output arrive before an error."""
    body = {
        "model": "tiny-pair",
        "messages": [{"role": "user", "content": "count to a thousand"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    result = {"content": 0, "done": False, "error": None}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result["error"] = f"HTTP {response.status_code}: {await response.aread()!r}"
                return result
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    result["done"] = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        result["error"] = event["error"]
                    elif event["choices"] and event["choices"][0]["delta"].get("content"):
                        result["content"] += 1
                        seen.set()
    except httpx.HTTPError as exc:
        result["error"] = repr(exc)
    return result


PAIR = {
    "tiny-pair": {
        **TINY,
        "max_batch_size": 1,  # one generates, the others wait inside the replica
        "deploy": {"replicas": 2, "num_cpus": 1, "max_ongoing_requests": 4},
    }
}


@pytest.fixture(scope="module")
def pair(cluster, models_root):
    yield _deploy(models_root, PAIR, "pair", cluster)
    if "pair" in serve.status().applications:
        ray_serve.undeploy("pair")


def test_routes_auth_and_two_replicas_share_the_load(pair) -> None:
    from openai import OpenAI

    assert httpx.get(f"{pair}/v1/models").status_code == 401  # the same API keys
    client = OpenAI(base_url=f"{pair}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-pair"]

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=pair, headers=AUTH, timeout=120) as http:
            seen = asyncio.Event()
            return await asyncio.gather(*(_stream(http, 8, seen) for _ in range(12)))

    results = asyncio.run(burst())
    assert all(r["done"] and r["error"] is None for r in results), results
    out = client.chat.completions.create(
        model="tiny-pair", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.usage.completion_tokens > 0 and out.choices[0].message.content
    # Tools and errors cross the cluster: a forced call comes back, a too-long prompt is 400.
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    called = client.chat.completions.create(
        model="tiny-pair",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
    )
    assert called.choices[0].message.tool_calls[0].function.name == "get_weather"
    too_long = {"model": "tiny-pair", "messages": [{"role": "user", "content": "hi " * 3000}]}
    error = httpx.post(f"{pair}/v1/chat/completions", json=too_long, headers=AUTH, timeout=60)
    assert error.status_code == 400, error.text
    # LangServe routes of the model, as with `chatbot serve`.
    invoke = httpx.post(f"{pair}/models/tiny-pair/invoke", json={"input": "hi"}, headers=AUTH)
    assert invoke.status_code == 200 and invoke.json()["output"]["content"]

    stats = {s["replica"]: s for s in _snapshot("pair")}
    assert len(stats) == 2 and all(s["outcomes"].get("ok", 0) > 0 for s in stats.values())
    # /metrics: the ingress's own series plus each replica's counters.
    text = httpx.get(f"{pair}/metrics", headers=AUTH).text
    replicas = set(re.findall(r'chatbot_replica_requests_total\{[^}]*replica="([^"]+)"', text))
    assert replicas == set(stats)
    assert 'chatbot_model_requests_total{endpoint="chat",model="tiny-pair"' in text


def test_a_client_that_leaves_cancels_the_generation_on_its_replica(pair) -> None:
    def cancelled() -> int:
        return sum(s["outcomes"].get("cancelled", 0) for s in _snapshot("pair"))

    before = cancelled()
    body = {
        "model": "tiny-pair",
        "messages": [{"role": "user", "content": "count to a thousand"}],
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", f"{pair}/v1/chat/completions", json=body, headers=AUTH) as r:
        for line in r.iter_lines():
            if '"content":' in line:
                break  # leave after the first token
    _wait(lambda: cancelled() == before + 1, 60, "cancelled on the replica")


def test_a_dead_replica_loses_no_request_that_had_not_started(pair) -> None:
    victim = _snapshot("pair")[0]

    def _victim_in_flight() -> int:
        return next(s for s in _snapshot("pair") if s["replica"] == victim["replica"])["in_flight"]

    async def load() -> list[dict]:
        async with httpx.AsyncClient(base_url=pair, headers=AUTH, timeout=300) as http:
            seen = asyncio.Event()
            tasks = [asyncio.create_task(_stream(http, 400, seen)) for _ in range(8)]
            # Each replica takes 4 (max_ongoing_requests) and generates one at a time
            # (max_batch_size 1): with 3+ in flight on the victim, 2+ wait, not streaming.
            deadline = time.monotonic() + 120
            while _victim_in_flight() < 3:
                assert time.monotonic() < deadline, _snapshot("pair")
                await asyncio.sleep(0.02)
            ray.kill(ray.get_actor(victim["actor"], namespace="serve"), no_restart=True)
            return await asyncio.gather(*tasks)

    results = asyncio.run(load())
    for r in results:  # finished, or cut only after its output had started
        assert r["done"] or r["content"] > 0, results
    assert sum(r["done"] for r in results) >= 6, results  # at most one streaming on victim
    metrics = httpx.get(f"{pair}/metrics", headers=AUTH).text
    retried = re.search(r'chatbot_replica_retries_total\{model="tiny-pair"\} (\S+)', metrics)
    assert retried and float(retried.group(1)) >= 2  # the victim's waiting ones, elsewhere

    def replaced() -> bool:
        ids = {s["replica"] for s in _snapshot("pair")}
        return _running("pair", "model-tiny-pair") == 2 and len(ids - {victim["replica"]}) == 2

    _wait(replaced, 180, "back to 2 replicas")
    body = {"model": "tiny-pair", "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(f"{pair}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert ok.status_code == 200


def test_deleting_the_app_drains_the_stream_in_flight(pair) -> None:
    states: list[str] = []

    async def one() -> dict:
        async with httpx.AsyncClient(base_url=pair, headers=AUTH, timeout=300) as http:
            seen = asyncio.Event()
            task = asyncio.create_task(_stream(http, 400, seen))
            await asyncio.wait_for(seen.wait(), 120)
            deleting = threading.Thread(target=ray_serve.undeploy, args=("pair",))
            deleting.start()
            while not task.done():  # the app is being deleted while the stream goes on
                app = serve.status().applications.get("pair")
                states.append(app.status if app else "GONE")
                await asyncio.sleep(0.1)
            await asyncio.to_thread(deleting.join, 120)
            return task.result()

    result = asyncio.run(one())
    assert result["done"] and result["error"] is None, result
    assert "DELETING" in states, states
    assert "pair" not in serve.status().applications


def test_a_burst_scales_up_within_bounds_and_back_down(cluster, models_root) -> None:
    deploy = {
        "replicas": 1,
        "min": 1,
        "max": 2,
        "num_cpus": 1,
        "max_ongoing_requests": 8,
        "target_ongoing_requests": 1,
        "upscale_delay": 0,
        "downscale_delay": 2,
        "look_back": 1,
    }
    models = {"tiny-pair": {**TINY, "max_batch_size": 1, "deploy": deploy}}
    base = _deploy(models_root, models, "scale", cluster)
    counts: list[int] = []
    try:
        assert _running("scale", "model-tiny-pair") == 1

        async def burst() -> list[dict]:
            async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=300) as http:
                seen = asyncio.Event()
                tasks = [asyncio.create_task(_stream(http, 200, seen)) for _ in range(8)]
                while not all(t.done() for t in tasks):
                    counts.append(_replicas("scale", "model-tiny-pair"))
                    await asyncio.sleep(0.25)
                return [t.result() for t in tasks]

        results = asyncio.run(burst())
        assert all(r["done"] for r in results), results
        assert max(counts) == 2, counts  # scaled up during the burst, never past max
        _wait(lambda: _replicas("scale", "model-tiny-pair") == 1, 120, "scaled back down")
        assert _running("scale", "model-tiny-pair") == 1
    finally:
        ray_serve.undeploy("scale")


def test_more_than_the_cluster_has_is_a_clear_error(cluster, models_root) -> None:
    for need, shown in (({"num_gpus": 1}, "GPU=1"), ({"num_cpus": 64}, "CPU=64")):
        models = {"too-big": {**TINY, "deploy": need}}
        registry = parse_registry({"models": models}, models_root, source="<test>")
        with pytest.raises(ray_serve.DeployError, match=rf"'too-big': one replica needs .*{shown}"):
            ray_serve.deploy(registry, Settings(), app_name="big", timeout=30)
        assert "big" not in serve.status().applications
