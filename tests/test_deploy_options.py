"""The registry's `deploy:` field and how `chatbot deploy` turns it into Ray Serve options
(no Ray needed: tests/test_ray_serve.py runs them on a cluster)."""

from __future__ import annotations

import pytest

from chatbot.deploy import ray_serve
from chatbot.registry import RegistryError, parse_registry
from chatbot.settings import Settings


def _registry(models_root, deploy: dict | None = None, **extra):
    tiny = {"path": "tiny-qwen2", **({"deploy": deploy} if deploy is not None else {})}
    models = {"tiny": tiny, "gpt": {"provider": "openai", "model": "gpt-4o-mini"}, **extra}
    return parse_registry({"models": models}, models_root, source="models.yaml")


@pytest.mark.parametrize(
    ("deploy", "message"),
    [
        ({"replicas": 5, "max": 4}, "models.tiny.deploy: Value error, need min <= replicas <= max"),
        ({"replicas": 0, "min": 1}, "need min <= replicas <= max, got 1 <= 0"),
        ({"num_gpus": -1}, "models.tiny.deploy.num_gpus: Input should be greater than or equal"),
        ({"memory": "lots"}, "models.tiny.deploy.memory"),
        ({"replica": 2}, "models.tiny.deploy.replica: Extra inputs are not permitted"),
    ],
)
def test_bad_deploy_fields_name_the_field(models_root, deploy, message) -> None:
    with pytest.raises(RegistryError, match=message.replace("(", r"\(")):
        _registry(models_root, deploy)


def test_fixed_replicas_and_resources(models_root) -> None:
    entry = _registry(models_root, {"replicas": 3, "num_gpus": 1, "memory": "2GiB"}).get("tiny")
    options = ray_serve.deployment_options(entry, Settings(shutdown_grace=12))
    assert options["name"] == "model-tiny" and options["num_replicas"] == 3
    assert "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0, "memory": 2**31}
    assert options["graceful_shutdown_timeout_s"] == 12  # replicas drain this long


def test_autoscaling_bounds(models_root) -> None:
    deploy = {"replicas": 2, "min": 1, "max": 4, "upscale_delay": 1, "downscale_delay": 5}
    entry = _registry(models_root, deploy).get("tiny")
    scaling = ray_serve.deployment_options(entry, Settings())["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"], scaling["max_replicas"]) == (
        1,
        2,
        4,
    )
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"]) == (1, 5)
    assert scaling["look_back_period_s"] > scaling["metrics_interval_s"]


def test_only_local_entries_become_deployments(models_root) -> None:
    registry = _registry(models_root)
    assert [e.name for e in ray_serve.deployed_entries(registry)] == ["tiny"]
    remote = ray_serve.remote_registry(registry, "app")
    assert remote.get("tiny").engines == [ray_serve.ENGINE]
    assert remote.get("tiny").model == "app/model-tiny"
    assert remote.get("gpt") is registry.get("gpt")  # online providers stay as they are
    assert registry.get("tiny").engines == ["transformers"]  # the original is unchanged


def test_a_replica_no_node_can_hold_is_an_error(models_root) -> None:
    registry = _registry(models_root, {"num_gpus": 2, "memory": "4GiB"})
    nodes = [{"CPU": 8.0, "GPU": 1.0, "memory": 64 * 2**30}, {"CPU": 2.0, "memory": 2**30}]
    with pytest.raises(ray_serve.DeployError, match=r"'tiny': one replica needs .*GPU=2"):
        ray_serve.check_resources(registry, nodes)
    nodes[0]["GPU"] = 2.0
    ray_serve.check_resources(registry, nodes)  # fits on the first node
