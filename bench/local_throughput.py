"""Local throughput: generated tokens/s and p50/p95 latency at 1, 4, 8, 16 concurrent chat
requests, ours against the alternatives, measured side by side in one run:

  ours        ChatLocal (batching HFRuntime) in-process, `ainvoke` from N clients
  (a)         serialized `model.generate()` (one request at a time, as a naive server does)
  (b)         langchain-huggingface ChatHuggingFace(HuggingFacePipeline) `ainvoke`
  ours-http   our OpenAI-compatible server (`chatbot.api.app:create_app`) over HTTP
  (c)         `transformers serve` (transformers' OpenAI-compatible server) over HTTP

In-process systems are compared with ours in-process; HTTP servers with ours over HTTP.
Every system runs greedy (temperature 0), the same prompts and the same max_tokens; tokens
are counted as each system reports them (usage), or re-tokenized where it reports none.

    python bench/local_throughput.py [--model NAME|DIR] [--max-tokens 64] [--threads 1]

(b) runs in a separate virtualenv, because langchain-huggingface pins an older
huggingface_hub than the project's environment:
    python -m venv --system-site-packages /tmp/bench-venv
    /tmp/bench-venv/bin/pip install langchain-huggingface
and is skipped if `--lchf-python` (default /tmp/bench-venv/bin/python) does not exist.
Torch uses `--threads` threads in every process (default 1: the CI box has 2 shared cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_model_args,
    drive,
    fmt,
    free_port,
    messages,
    model_dir,
    print_table,
    registry_for,
    server,
    set_threads,
)

TARGETS = {"(a)": 3.0, "(b)": 3.0, "(c)": 1.5}  # ours / baseline tok/s at 8 concurrent


def ours_in_process(name: str, max_tokens: int):
    import chatbot

    model = chatbot.get_chat_model(name, temperature=0, max_tokens=max_tokens)

    async def call(i: int) -> int:
        reply = await model.ainvoke(messages(i))
        return reply.usage_metadata["output_tokens"]

    return call


def serialized_generate(path: Path, max_tokens: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    one_at_a_time = ThreadPoolExecutor(1)

    def generate(i: int) -> int:
        inputs = tokenizer.apply_chat_template(
            messages(i), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return out.shape[1] - inputs["input_ids"].shape[1]

    async def call(i: int) -> int:
        return await asyncio.get_running_loop().run_in_executor(one_at_a_time, generate, i)

    return call


def http_chat(base_url: str, model: str, max_tokens: int):
    import httpx

    client = httpx.AsyncClient(base_url=base_url, timeout=600, limits=httpx.Limits())

    async def call(i: int) -> int:
        body = {"model": model, "messages": messages(i), "max_tokens": max_tokens, "temperature": 0}
        reply = await client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()
        return reply.json()["usage"]["completion_tokens"]

    return call


class LchfWorker:
    """(b) in the bench virtualenv, driven over a pipe."""

    def __init__(self, python: str, path: Path, max_tokens: int, threads: int) -> None:
        worker = Path(__file__).with_name("lchf_worker.py")
        self.proc = subprocess.Popen(
            [python, str(worker), str(path), str(max_tokens), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        while line := self.proc.stdout.readline():  # type: ignore[union-attr]
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError("langchain-huggingface worker exited")

    def run(self, concurrency: int, total: int) -> dict:
        self.proc.stdin.write(json.dumps({"concurrency": concurrency, "total": total}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def measure(call, concurrency: int, total: int) -> dict:
    await call(0)  # warm up (first-call allocations, connection set-up)
    return await drive(call, concurrency, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--lchf-python", default="/tmp/bench-venv/bin/python")
    parser.add_argument("--skip", default="", help="comma list of systems to skip: a,b,c,http")
    args = parser.parse_args()
    set_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    skip = set(args.skip.split(","))
    results: dict[tuple[int, str], dict] = {}

    with model_dir(args.model) as path, registry_for(path, max_batch_size=max(levels)) as name:
        from chatbot.settings import get_settings

        config = str(get_settings().config)
        calls = {"ours": ours_in_process(name, args.max_tokens)}
        if "a" not in skip:
            calls["(a)"] = serialized_generate(path, args.max_tokens)
        with contextlib.ExitStack() as stack:
            lchf = None
            if "b" not in skip and Path(args.lchf_python).exists():
                lchf = LchfWorker(args.lchf_python, path, args.max_tokens, args.threads)
                stack.callback(lchf.close)
            if "http" not in skip:
                port = free_port()
                cmd = [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "chatbot.api.app:create_app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
                stack.enter_context(
                    server(
                        cmd,
                        f"http://127.0.0.1:{port}/ready",
                        "bench-ours",
                        env={"CHATBOT_CONFIG": config},
                    )
                )
                calls["ours-http"] = http_chat(f"http://127.0.0.1:{port}", name, args.max_tokens)
            if "c" not in skip:
                port = free_port()
                cmd = [
                    "transformers",
                    "serve",
                    str(path),
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--device",
                    "cpu",
                    "--log-level",
                    "warning",
                ]
                stack.enter_context(server(cmd, f"http://127.0.0.1:{port}/health", "bench-tserve"))
                calls["(c)"] = http_chat(f"http://127.0.0.1:{port}", str(path), args.max_tokens)
            loop = asyncio.new_event_loop()  # one loop: HTTP clients are bound to it
            stack.callback(loop.close)
            for level in levels:  # systems interleaved per level: same machine load
                total = level * args.rounds
                for system, call in calls.items():
                    results[level, system] = loop.run_until_complete(measure(call, level, total))
                    print(f"  c={level} {system}: {results[level, system]}", file=sys.stderr)
                if lchf is not None:
                    lchf.run(1, 1)  # warm-up
                    results[level, "(b)"] = lchf.run(level, total)

    report(results, levels, args)


def report(results: dict, levels: list[int], args: argparse.Namespace) -> None:
    reference = {"(a)": "ours", "(b)": "ours", "(c)": "ours-http"}
    order = ["ours", "(a)", "(b)", "ours-http", "(c)"]
    rows = []
    for level in levels:
        for system in order:
            r = results.get((level, system))
            if r is None:
                continue
            ref = results.get((level, reference.get(system, "")))
            ratio = fmt(ref["tok_s"] / r["tok_s"], 2) + "x" if ref else ""
            rows.append(
                [
                    str(level),
                    system,
                    fmt(r["tok_s"]),
                    fmt(r["p50"] * 1000, 0),
                    fmt(r["p95"] * 1000, 0),
                    ratio,
                ]
            )
    notes = [
        f"max_tokens={args.max_tokens}, {args.rounds} requests per client, "
        f"torch threads={args.threads}, model={args.model or 'tiny (built)'}"
    ]
    for system, target in TARGETS.items():
        r, ref = results.get((8, system)), results.get((8, reference[system]))
        if r and ref:
            ratio = ref["tok_s"] / r["tok_s"]
            verdict = "met" if ratio >= target else "NOT met"
            notes.append(
                f"target at 8 concurrent: {reference[system]} >= {target}x {system}: "
                f"{ratio:.2f}x ({verdict})"
            )
    header = ["concurrent", "system", "tok/s", "p50 ms", "p95 ms", "ours / system"]
    title = "Local throughput: generated tokens/s (ours-http is the reference for (c))"
    print_table(title, header, rows, notes)


if __name__ == "__main__":
    main()
