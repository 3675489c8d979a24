"""What this CPU can do, for defaults of local engines: bf16 matmul support, core count.

Read from /proc/cpuinfo (Linux); elsewhere the answers are the safe ones (no bf16,
os.cpu_count() cores).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# Flags with which oneDNN runs bf16 matmuls natively (x86: AMX tiles or AVX512-BF16;
# ARM: the BF16 extension). Without them bf16 is emulated and slower than float32.
_BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def has_native_bf16() -> bool:
    return bool(cpu_flags() & _BF16_FLAGS)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads slow matmuls down)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
            cores.add((physical, core))
    total = len(cores) or os.cpu_count() or 1
    return max(1, min(total, usable) if usable else total)


def serving_threads(entry_threads: int | None, default: int | None) -> int:
    """CPU threads for a local engine: the entry's option, else the process setting
    (CHATBOT_THREADS), else the physical cores."""
    return entry_threads or default or physical_cores()
