"""deploy/kuberay-rayservice.yaml: valid against KubeRay's RayService CRD schema (v1, kept
in tests/data with its source), its serveConfigV2 valid for Ray Serve's own config schema,
and pointing at our app builder with Settings fields and the paths the pods mount."""

from __future__ import annotations

import copy
import gzip
import importlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from chatbot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay-rayservice.yaml"
SCHEMA = Path(__file__).parent / "data" / "kuberay_rayservice_v1_schema.json.gz"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    with gzip.open(SCHEMA, "rt") as f:
        schema = json.load(f)["schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_manifest_matches_the_kuberay_crd_schema(manifest, validator) -> None:
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert _errors(validator, manifest) == []


def test_the_schema_check_can_fail(manifest, validator) -> None:
    bad = copy.deepcopy(manifest)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    del bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    errors = _errors(validator, bad)
    assert any("replicas" in e and "integer" in e for e in errors), errors
    assert any("'template' is a required property" in e for e in errors), errors


def _serve_config(manifest: dict) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def test_serve_config_points_at_our_app_builder(manifest) -> None:
    config = _serve_config(manifest)
    (app,) = config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert app["route_prefix"] == "/"
    settings = Settings(**app["args"])  # the args are chatbot Settings
    assert set(app["args"]) <= set(Settings.model_fields)
    mounts = set()
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["template"]["spec"]["containers"]:
            mounts |= {m["mountPath"] for m in container.get("volumeMounts", [])}
    for path in (settings.config, settings.models_root):
        assert any(str(path).startswith(m) for m in mounts), (path, mounts)


def test_serve_config_is_valid_for_ray_serve(manifest) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve not installed")
    parsed = schema.ServeDeploySchema.model_validate(_serve_config(manifest))
    assert parsed.applications[0].import_path == "chatbot.deploy.ray_serve:app_builder"
    assert parsed.http_options.port == 8000
