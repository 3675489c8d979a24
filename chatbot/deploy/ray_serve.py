"""`chatbot deploy`: the server on a Ray cluster with Ray Serve.

Each served local registry entry becomes a Ray Serve deployment (`model-<name>`) whose
replicas load the model (`ModelServer`); its `deploy:` field gives the replica count,
autoscaling bounds and per-replica resources. One ingress deployment runs the same app
as `chatbot serve` (`chatbot.api.create_app`: /v1, LangServe, the page, /metrics, the
same API keys) on a registry whose local entries call the model deployments
(chatbot.deploy.remote). Online providers stay in the ingress: they have no weights.

Replicas stop the Ray Serve way: no new requests, then up to `shutdown_grace` seconds for
the ones in flight. A request whose replica dies before any output reached the client
is sent again to a live replica (chatbot.deploy.remote); Ray Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

from chatbot.catalog import ModelCatalog
from chatbot.deploy.stats import NAMESPACE, ReplicaCollector, ReplicaStats, hub_actor
from chatbot.registry import ModelEntry, Registry
from chatbot.settings import Settings

log = logging.getLogger(__name__)

ENGINE = "chatbot.deploy.remote:RayServeEngine"
INGRESS = "ingress"


class DeployError(RuntimeError):
    """The app cannot run on this cluster; the message says which model and why."""


def deployment_name(entry_name: str) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", entry_name)


def hub_name(app_name: str) -> str:
    return f"{app_name}-metrics"


def deployed_entries(registry: Registry) -> list[ModelEntry]:
    """The entries that get their own deployment: served ones with local weights."""
    return [e for e in registry.served() if e.is_local]


# --- the model replicas ---------------------------------------------------------------


class ModelServer:
    """One replica of one registry entry: loads its engine and answers the ingress."""

    def __init__(self, registry: Registry, name: str, settings: Settings) -> None:
        from ray import serve

        # Each replica owns its catalog: its one model, its pool, no process globals.
        self.catalog = ModelCatalog(registry, settings)
        self.entry = registry.entries[name]
        self.engine = self.catalog.engine(name, self.entry.kind)
        context = serve.get_replica_context()
        replica = context.replica_id
        self.actor_name = replica.to_full_id_str()
        self.stats = ReplicaStats(model=name, replica=replica.unique_id, actor=self.actor_name)
        self.hub = hub_actor(hub_name(context.app_name))
        self._report()

    def _report(self) -> None:
        self.hub.report.remote(self.stats.as_dict())  # fire and forget

    def info(self) -> dict[str, Any]:
        from chatbot.api.models import supports_response_format, supports_tools

        info = {"replica": self.stats.replica, "actor": self.actor_name, "pid": os.getpid()}
        if self.entry.kind == "chat":
            model = self.catalog.chat_model(self.entry.name)
            info["tools"] = supports_tools(model)
            info["response_format"] = supports_response_format(model)
        return info

    async def chat(self, payload: dict[str, Any]) -> AsyncIterator[Any]:
        model: Any = self.catalog.chat_model(self.entry.name, **payload["overrides"])
        if payload.get("tools"):
            spec = dict(payload["tools"])
            model = model.bind_tools(spec.pop("tools"), **spec)
        self.stats.in_flight += 1
        self._report()
        outcome, tokens = "error", 0
        try:
            stream = model.astream(payload["messages"], stop=payload["stop"], **payload["kwargs"])
            async for chunk in stream:
                if chunk.usage_metadata:
                    tokens += chunk.usage_metadata.get("output_tokens", 0)
                yield chunk
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"  # the client left: ChatLocal aborts the generation
            raise
        finally:
            self.stats.finish(outcome, tokens)
            self._report()

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.catalog.embeddings(self.entry.name).aembed_documents(texts)

    async def embed_query(self, text: str) -> list[float]:
        return await self.catalog.embeddings(self.entry.name).aembed_query(text)


# --- the ingress ----------------------------------------------------------------------


def remote_registry(registry: Registry, app_name: str) -> Registry:
    """The ingress's registry: deployed entries call their deployment, the rest as is."""
    entries = dict(registry.entries)
    for entry in deployed_entries(registry):
        model = f"{app_name}/{deployment_name(entry.name)}"
        entries[entry.name] = entry.model_copy(update={"engines": [ENGINE], "model": model})
    return Registry(
        entries,
        registry.default_model,
        registry.default_embeddings,
        registry.serve,
        source=registry.source,
    )


class Ingress:
    """The app of `chatbot serve`, with the models behind Ray Serve handles."""

    def __init__(self, registry: Registry, settings: Settings, models: Any) -> None:
        from ray import serve

        # `models` (the bound model deployments) makes them part of this application.
        app_name = serve.get_replica_context().app_name
        self.catalog = ModelCatalog(remote_registry(registry, app_name), settings)
        self.settings = settings
        self.hub = hub_actor(hub_name(app_name))
        self.snapshot: list[dict[str, Any]] = []

    def _retries(self) -> dict[str, int]:
        return {
            name: engine.calls.retries
            for name, engine in self.catalog.loaded().items()
            if hasattr(engine, "calls")
        }

    def __serve_build_asgi_app__(self) -> Any:
        from chatbot.api import create_app

        app = create_app(self.settings, show_progress=False, catalog=self.catalog)
        collector = ReplicaCollector(lambda: self.snapshot, self._retries)
        app.state.chatbot.metrics.registry.register(collector)

        async def asgi(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope.get("path") == "/metrics":
                try:  # fresh per-replica counters for this scrape
                    self.snapshot = await self.hub.snapshot.remote()
                except Exception as exc:  # noqa: BLE001 - serve the rest of the metrics
                    log.warning("metrics hub unreachable: %s", exc)
            await app(scope, receive, send)

        return asgi


# --- building and deploying -----------------------------------------------------------


def deployment_options(entry: ModelEntry, settings: Settings) -> dict[str, Any]:
    d = entry.deploy
    actor: dict[str, Any] = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}
    if d.memory is not None:
        actor["memory"] = int(d.memory)
    options: dict[str, Any] = {
        "name": deployment_name(entry.name),
        "ray_actor_options": actor,
        "max_ongoing_requests": d.max_ongoing_requests,
        "graceful_shutdown_timeout_s": settings.shutdown_grace,  # drain before stopping
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    if d.autoscaling:
        low = d.min if d.min is not None else min(d.replicas, 1)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": d.max if d.max is not None else max(d.replicas, low),
            "initial_replicas": d.replicas,
            "target_ongoing_requests": d.target_ongoing_requests,
            "upscale_delay_s": d.upscale_delay,
            "downscale_delay_s": d.downscale_delay,
            "look_back_period_s": d.look_back,
            "metrics_interval_s": min(10.0, d.look_back / 2),
        }
    else:
        options["num_replicas"] = d.replicas
    return options


def build_application(registry: Registry, settings: Settings, ingress_cpus: float = 0.5) -> Any:
    """The Ray Serve application (deploy it under any name)."""
    from ray import serve

    models = {}
    for entry in deployed_entries(registry):
        deployment = serve.deployment(ModelServer).options(**deployment_options(entry, settings))
        models[entry.name] = deployment.bind(registry, entry.name, settings)
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name=INGRESS,
        ray_actor_options={"num_cpus": ingress_cpus},
        max_ongoing_requests=1000,  # requests wait at the model replicas, not here
        graceful_shutdown_timeout_s=settings.shutdown_grace,
        graceful_shutdown_wait_loop_s=0.5,
    )
    return ingress.bind(registry, settings, models)


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run` and KubeRay's serveConfigV2: `import_path:
    chatbot.deploy.ray_serve:app_builder`, `args` = Settings fields (config, models_root,
    api_keys, ...; CHATBOT_* environment variables also apply)."""
    from chatbot.registry import load_registry

    settings = Settings(**args)
    return build_application(load_registry(settings.config, settings.models_root), settings)


def check_resources(registry: Registry, nodes: list[dict[str, float]]) -> None:
    """A replica that no node can hold would wait forever: say so before deploying."""
    for entry in deployed_entries(registry):
        d = entry.deploy
        need = {"CPU": d.num_cpus, "GPU": d.num_gpus, "memory": float(d.memory or 0)}
        need = {k: v for k, v in need.items() if v}
        if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            have = [{k: node.get(k, 0) for k in ("CPU", "GPU", "memory")} for node in nodes]
            raise DeployError(
                f"model {entry.name!r}: one replica needs {_fmt(need)}, but no node of the "
                f"Ray cluster has that much (nodes: {'; '.join(_fmt(h) for h in have)}). "
                f"Lower models.{entry.name}.deploy or add a node."
            )


def _fmt(resources: dict[str, float]) -> str:
    parts = []
    for key, value in resources.items():
        shown = f"{value / 2**30:.1f}GiB" if key == "memory" else f"{value:g}"
        parts.append(f"{key}={shown}")
    return ", ".join(parts) or "nothing"


def deploy(
    registry: Registry,
    settings: Settings,
    *,
    app_name: str = "chatbot",
    host: str = "127.0.0.1",
    port: int = 8888,
    timeout: float = 600.0,
    ingress_cpus: float = 0.5,
) -> str:
    """Deploy on the Ray cluster this process is connected to (`ray.init` first); returns
    the URL once every deployment runs, or raises DeployError."""
    import ray
    from ray import serve

    check_resources(registry, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    serve.start(http_options={"host": host, "port": port})
    application = build_application(registry, settings, ingress_cpus)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(application, name=app_name, route_prefix="/")
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="serve-run", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive() or failure:
        detail = _status_detail(app_name)
        cause = f"{failure[0]}; " if failure else f"not running after {timeout:g} s; "
        raise DeployError(f"deploying {app_name!r} failed: {cause}{detail}")
    return f"http://{host}:{port}"


def _status_detail(app_name: str) -> str:
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception as exc:  # noqa: BLE001
        return f"(status unavailable: {exc})"
    if app is None:
        return "(no such application)"
    parts = [f"app {app.status}: {app.message}"]
    for name, dep in app.deployments.items():
        parts.append(f"{name} {dep.status}: {dep.message}")
    return "; ".join(p for p in parts if p)


def undeploy(app_name: str = "chatbot") -> None:
    """Delete the app (its replicas drain first) and its metrics hub."""
    import ray
    from ray import serve

    serve.delete(app_name)
    try:
        ray.kill(ray.get_actor(hub_name(app_name), namespace=NAMESPACE))
    except ValueError:  # never made or already gone
        pass
