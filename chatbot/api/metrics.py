"""Prometheus metrics: HTTP requests and latency per route; per model: requests,
latency, tokens in/out, time to first token, requests in flight, loaded or not.

Each app has its own CollectorRegistry, so several apps can live in one process. The
router's per-replica counters (process-wide, on prometheus_client's default registry)
are added to each app's registry so that /metrics shows them too.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.api import limits
from chatbot.api.errors import from_exception
from chatbot.catalog import ModelCatalog
from model_adapters.constrained import grammar_cache_bytes
from model_adapters.router.replicas import REPLICA_COUNTERS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "chatbot_http_requests", "HTTP requests.", ["method", "route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "chatbot_http_request_duration_seconds",
            "HTTP request latency (to the end of the response body).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "chatbot_model_requests",
            "Model requests by outcome (ok, error, cancelled).",
            ["model", "endpoint", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "chatbot_model_request_duration_seconds",
            "Model request latency, to the last token.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_in = Counter(
            "chatbot_prompt_tokens", "Prompt (input) tokens.", ["model"], registry=r
        )
        self.tokens_out = Counter(
            "chatbot_completion_tokens", "Completion (output) tokens.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "chatbot_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "chatbot_model_requests_in_flight", "Model requests in progress.", ["model"], registry=r
        )
        self.loaded = Gauge(
            "chatbot_model_loaded", "1 if the model is loaded.", ["model"], registry=r
        )
        self.grammar_cache = Gauge(
            "chatbot_grammar_cache_bytes",
            "Bytes held by the compiled-grammar caches (bounded LRU, structured output).",
            registry=r,
        )
        for counter in REPLICA_COUNTERS:
            r.register(counter)

    def track(self, model: str, endpoint: str) -> RequestTracker:
        return RequestTracker(self, model, endpoint)

    def render(self, catalog: ModelCatalog) -> tuple[bytes, str]:
        loaded = catalog.loaded()
        for entry in catalog.registry.served():
            self.loaded.labels(entry.name).set(1 if entry.name in loaded else 0)
        self.grammar_cache.set(grammar_cache_bytes())
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestTracker:
    """One model request: call `first_token()`, `tokens()`, then `finish(outcome)` once."""

    def __init__(self, metrics: Metrics, model: str, endpoint: str) -> None:
        self.metrics = metrics
        self.model = model
        self.endpoint = endpoint
        self.start = time.perf_counter()
        self._first = False
        self._done = False
        metrics.in_flight.labels(model).inc()

    def first_token(self) -> None:
        if not self._first:
            self._first = True
            self.metrics.ttft.labels(self.model).observe(time.perf_counter() - self.start)

    def tokens(self, prompt: int, completion: int) -> None:
        limits.charge_tokens(prompt + completion)  # the caller's tokens/min budget
        if prompt:
            self.metrics.tokens_in.labels(self.model).inc(prompt)
        if completion:
            self.metrics.tokens_out.labels(self.model).inc(completion)

    def finish(self, outcome: str = "ok") -> None:
        if self._done:
            return
        self._done = True
        m = self.metrics
        m.in_flight.labels(self.model).dec()
        m.requests.labels(self.model, self.endpoint, outcome).inc()
        m.latency.labels(self.model, self.endpoint).observe(time.perf_counter() - self.start)


class HTTPMetricsMiddleware:
    """Counts requests and measures latency per route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if status == [500]:  # the status the outer middleware will answer with
                status[0] = from_exception(exc).status
            raise
        finally:
            route = _route_label(scope)
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method, route, str(status[0])).inc()
            self.metrics.http_latency.labels(method, route).observe(time.perf_counter() - start)


def _route_label(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    if route is None:  # answered before routing (401, 413, 429): find the route it was for
        route = _matching_route(scope)
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    return path if isinstance(path, str) else "unmatched"


def _matching_route(scope: dict[str, Any]) -> Any:
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None) or []
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route  # the path matched, the method did not (405)
    return partial
