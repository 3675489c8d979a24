"""The `chatbot` CLI (typer's CliRunner) and real server processes: `chatbot serve` and
`python app.py`, each on a free 127.0.0.1 port, terminated at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from chatbot import factory
from chatbot.cli import app
from tests.server_utils import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def test_models_table(registry_file):
    result = runner.invoke(app, ["models"], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in ("tiny", "tiny-llama", "tiny-plain", "minilm"):
        assert name in result.output
    assert "transformers" in result.output
    assert "sentence-transformers" in result.output
    assert "(default)" in result.output
    with_config = runner.invoke(app, ["models", "--config", str(registry_file)], env=WIDE)
    assert with_config.exit_code == 0
    assert "tiny-plain" in with_config.output


def test_models_with_a_bad_registry_names_the_field(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  m:\n    path: nowhere\n    engines: [vlm]\n")
    result = runner.invoke(app, ["models", "--config", str(bad)], env=WIDE)
    assert result.exit_code == 1
    assert "models.m.engines[0]" in result.output
    assert "unknown engine 'vlm'" in result.output


def test_tiny_model_command(tmp_path):
    out = tmp_path / "llama-tiny"
    result = runner.invoke(app, ["tiny-model", str(out), "--arch", "llama"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (out / "tokenizer.json").exists()
    bad = runner.invoke(app, ["tiny-model", str(tmp_path / "x"), "--arch", "gpt5"])
    assert bad.exit_code != 0
    assert "qwen2" in bad.output


def test_chat_command_streams_answers():
    expected = factory.get_chat_model("tiny", max_tokens=5).invoke("hello").content
    result = runner.invoke(
        app,
        ["chat", "tiny", "--max-tokens", "5"],
        input="hello\n/reset\n\nhello\n/exit\n",
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("tiny>") == 2
    assert result.output.count(expected) == 2  # /reset: the second turn starts afresh
    assert "history cleared" in result.output
    unknown = runner.invoke(app, ["chat", "no-such-model"], input="/exit\n")
    assert unknown.exit_code == 1
    assert "no-such-model" in unknown.output


# --- real processes --------------------------------------------------------------------


@contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra)
    return env


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        try:
            wait_for(f"{url}/ready", timeout=1)
            return
        except TimeoutError:
            continue
    pytest.fail(f"server not ready; its output:\n{log.read_text(errors='replace')[-3000:]}")


def _check_chat(url: str, model: str, proc: subprocess.Popen, log: Path) -> None:
    _wait_ready(url, proc, log)
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_python_app_py_serves(registry_file, models_root, tmp_path):
    port = free_port()
    env = _env(
        CHATBOT_CONFIG=str(registry_file),
        CHATBOT_MODELS_ROOT=str(models_root),
        CHATBOT_PORT=str(port),
    )
    log = tmp_path / "app.log"
    with running([sys.executable, "app.py"], env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        _check_chat(url, "tiny", proc, log)
        assert proc.poll() is None
    assert proc.returncode is not None
    assert "serving on" in log.read_text(errors="replace")


def test_chatbot_serve_with_an_ad_hoc_model_path(registry_file, models_root, tmp_path):
    model_dir = tmp_path / "my-model"
    assert runner.invoke(app, ["tiny-model", str(model_dir)]).exit_code == 0
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "chatbot.cli",
        "serve",
        "--config",
        str(registry_file),
        "--port",
        str(port),
        "--model",
        str(model_dir),
    ]
    log = tmp_path / "serve.log"
    with running(cmd, _env(CHATBOT_MODELS_ROOT=str(models_root)), log) as proc:
        url = f"http://127.0.0.1:{port}"
        _check_chat(url, "my-model", proc, log)
        served = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert set(served) == {"my-model", "minilm"}  # only the model asked for (+ embeddings)
        assert served["my-model"]["engine"] == "transformers"
        # The model given is the default one.
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert r.json()["model"] == "my-model"
