"""Per-replica counters for the ingress's /metrics.

Ray Serve routes each call to one replica, so the ingress cannot ask every replica. Each
model replica reports its counters to one small named Ray actor (`MetricsHub`) after
every request; the ingress reads the hub when /metrics is scraped and adds the
per-replica series to its own (which already count every request, since all of them pass
through the ingress).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

NAMESPACE = "chatbot"


@dataclass
class ReplicaStats:
    model: str
    replica: str
    actor: str = ""  # the replica's Ray actor name (namespace "serve")
    in_flight: int = 0
    completion_tokens: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def finish(self, outcome: str, tokens: int) -> None:
        self.in_flight -= 1
        self.completion_tokens += tokens
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricsHub:
    """A Ray actor (see `hub_actor`): the latest counters of every replica that reported."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict[str, Any]] = {}

    def report(self, stats: dict[str, Any]) -> None:
        self.replicas[f"{stats['model']}/{stats['replica']}"] = stats

    def snapshot(self) -> list[dict[str, Any]]:
        return list(self.replicas.values())


def hub_actor(name: str) -> Any:
    """The app's hub, created by whichever replica asks first; detached, so it outlives
    any one replica (`ray_serve.undeploy` removes it)."""
    import ray

    actor = ray.remote(num_cpus=0)(MetricsHub)
    return actor.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


class ReplicaCollector:
    """prometheus_client collector over the hub's last snapshot and the ingress retries."""

    def __init__(
        self, snapshot: Callable[[], list[dict[str, Any]]], retries: Callable[[], dict[str, int]]
    ) -> None:
        self.snapshot = snapshot
        self.retries = retries

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "replica"]
        requests = CounterMetricFamily(
            "chatbot_replica_requests",
            "Requests per model replica by outcome.",
            labels=[*labels, "outcome"],
        )
        tokens = CounterMetricFamily(
            "chatbot_replica_completion_tokens",
            "Completion tokens per model replica.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "chatbot_replica_requests_in_flight",
            "Requests in progress per replica.",
            labels=labels,
        )
        for stats in self.snapshot():
            ids = [stats["model"], stats["replica"]]
            for outcome, count in stats["outcomes"].items():
                requests.add_metric([*ids, outcome], count)
            tokens.add_metric(ids, stats["completion_tokens"])
            in_flight.add_metric(ids, stats["in_flight"])
        retried = CounterMetricFamily(
            "chatbot_replica_retries",
            "Calls sent again because their replica was lost before any output.",
            labels=["model"],
        )
        for model, count in self.retries().items():
            retried.add_metric([model], count)
        yield from (requests, tokens, in_flight, retried)
