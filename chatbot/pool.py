"""The model pool: which local models are resident, within a memory budget.

Models load lazily on first use, or at start-up for entries with `lazy: false`
(the server's ModelLoader). With `memory_budget_gpu` / `memory_budget_cpu` set, loading a model that
would not fit first evicts the least recently used *idle* model on the same device.
A model with requests in flight is never evicted; unloading one drains it first.

Every loaded runtime is wrapped in a `PooledRuntime` that counts requests in flight
(the engine keeps its own runtime; the catalog hands the wrapper to chat models).
After its model is unloaded, a `PooledRuntime` (held by a ChatLocal a user kept) sends
new requests to a freshly loaded copy, so evicting a model never breaks its clients.

The pool belongs to one chatbot.catalog.ModelCatalog, which passes in its lock, its
settings and two callbacks (evict a name, reload a name): the pool never imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatbot.errors import PoolBusyError
from model_adapters.runtime import WEIGHT_SUFFIXES, Runtime, weights_bytes

if TYPE_CHECKING:
    from chatbot.engines import Engine
    from chatbot.registry import ModelEntry
    from chatbot.settings import Settings
    from model_adapters.generation import Delta, GenerationRequest, Sink

log = logging.getLogger(__name__)

__all__ = ["WEIGHT_SUFFIXES", "ModelPool", "PoolBusyError", "PooledRuntime", "weights_bytes"]


@dataclass
class Resident:
    """A loaded model as the pool sees it."""

    engine: Engine
    device: str  # "gpu" | "cpu"
    memory: int
    runtime: PooledRuntime | None
    last_use: float = field(default_factory=time.time)
    leaving: bool = False  # chosen for eviction

    def in_flight(self) -> int:
        return self.runtime.in_flight if self.runtime is not None else 0


class _TrackingSink:
    """Passes deltas on and reports the request finished at its last delta."""

    def __init__(self, inner: Sink, done: Any) -> None:
        self._inner = inner
        self._done = done
        self._finished = False

    def put(self, delta: Delta) -> None:
        self._inner.put(delta)
        if (delta.finish_reason or delta.error) and not self._finished:
            self._finished = True
            self._done()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


class PooledRuntime:
    """Stands in for an engine's runtime (same `submit` contract) and counts requests."""

    def __init__(self, name: str, real: Runtime, pool: ModelPool) -> None:
        self.name = name
        self._real = real
        self._pool = pool
        # Kept after unload: ChatLocal renders prompts before it submits.
        self.tokenizer = real.tokenizer
        self.context_length = real.context_length
        self.stats = real.stats
        self.device = getattr(real, "device", "cpu")
        self.in_flight = 0
        self.closed = False

    def __getattr__(self, attr: str) -> Any:
        real = self.__dict__.get("_real")
        if real is None:
            raise AttributeError(f"{attr} (model {self.__dict__.get('name')!r} was unloaded)")
        return getattr(real, attr)

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        if not self._pool._enter(self):
            # This copy was unloaded: use (or load) the current one.
            self._pool.reload(self.name).submit(request, sink)
            return
        try:
            self._real.submit(request, _TrackingSink(sink, lambda: self._pool._leave(self)))
        except BaseException:
            self._pool._leave(self)
            raise

    def close(self) -> None:
        """Refuse new requests, wait for those in flight, then close the real runtime."""
        self._pool._drain(self)
        real, self._real = self._real, None
        if real is not None:
            real.close()

    def memory_bytes(self) -> int:
        real = self._real
        return real.memory_bytes() if real is not None else 0


def _device_class(device: str) -> str:
    return "cpu" if str(device).startswith("cpu") else "gpu"


class ModelPool:
    def __init__(
        self,
        settings: Callable[[], Settings],
        lock: threading.RLock,
        evict: Callable[[str], None],
        reload: Callable[[str], Runtime],
    ) -> None:
        self._settings = settings
        self._catalog_lock = lock  # taken with ours while choosing a victim
        self._evict = evict  # the catalog forgets the engine of a name
        self.reload = reload  # the current runtime of a name, loading it if needed
        self._cond = threading.Condition(threading.RLock())
        self._load_lock = threading.RLock()  # re-entrant: an engine may load another
        self.resident: dict[str, Resident] = {}
        self.loading: set[str] = set()
        self.loads: dict[str, int] = {}
        self.last_use: dict[str, float] = {}

    # --- request accounting (PooledRuntime) ------------------------------------------

    def _enter(self, runtime: PooledRuntime) -> bool:
        with self._cond:
            if runtime.closed:
                return False
            runtime.in_flight += 1
            self.last_use[runtime.name] = time.time()
            if (res := self.resident.get(runtime.name)) is not None:
                res.last_use = self.last_use[runtime.name]
            return True

    def _leave(self, runtime: PooledRuntime) -> None:
        with self._cond:
            runtime.in_flight -= 1
            self._cond.notify_all()

    def _drain(self, runtime: PooledRuntime) -> None:
        # A request can't outlive the per-request deadline; don't wait forever on a
        # runtime whose worker died.
        limit = self._settings().request_timeout
        with self._cond:
            runtime.closed = True
            if not self._cond.wait_for(lambda: runtime.in_flight == 0, timeout=limit):
                log.warning(
                    "model %s: closing with %d requests still in flight after %.0f s",
                    runtime.name,
                    runtime.in_flight,
                    limit,
                )

    # --- hooks called by chatbot.catalog ---------------------------------------------

    def touch(self, name: str) -> None:
        with self._cond:
            self.last_use[name] = time.time()
            if (res := self.resident.get(name)) is not None:
                res.last_use = self.last_use[name]

    @contextmanager
    def loading_model(self, entry: ModelEntry, cls: type[Engine]) -> Iterator[None]:
        """Make room for `entry`, then let the caller load it (state 'loading' meanwhile)."""
        with self._cond:
            self.loading.add(entry.name)
        try:
            # One load at a time: the budget check sees every model that is resident, and
            # transformers' meta-device loading is not safe in two threads at once.
            with self._load_lock:
                self.make_room(entry, cls)
                yield
        finally:
            with self._cond:
                self.loading.discard(entry.name)

    def track(self, name: str, engine: Engine) -> PooledRuntime | None:
        """Record a freshly loaded engine; its runtime (if it has one) wrapped to count
        requests. The engine is left as it is: callers use the returned wrapper."""
        runtime = getattr(engine, "runtime", None)
        pooled = None
        if isinstance(runtime, Runtime):
            pooled = PooledRuntime(name, runtime, self)
        device = getattr(runtime, "device", None) or getattr(engine, "device", "cpu")
        with self._cond:
            self.resident[name] = Resident(
                engine, _device_class(device), engine.memory_bytes(), pooled
            )
            self.loads[name] = self.loads.get(name, 0) + 1
            self.last_use[name] = time.time()
        return pooled

    def forget(self, name: str, engine: Engine) -> None:
        with self._cond:
            if (res := self.resident.get(name)) is not None and res.engine is engine:
                del self.resident[name]
            self._cond.notify_all()

    # --- budget ----------------------------------------------------------------------

    def budget(self, device: str) -> int | None:
        s = self._settings()
        value = s.memory_budget_gpu if device == "gpu" else s.memory_budget_cpu
        return int(value) if value is not None else None

    def usage(self) -> dict[str, dict[str, int | None]]:
        """Bytes used and budget per device class, for the admin API."""
        return {d: {"used": self.used(d), "budget": self.budget(d)} for d in ("gpu", "cpu")}

    def used(self, device: str) -> int:
        with self._cond:
            return sum(r.memory for r in self.resident.values() if r.device == device)

    @staticmethod
    def estimate(entry: ModelEntry, cls: type[Engine]) -> tuple[str, int]:
        """(device class, bytes) a model will take once loaded, before loading it."""
        custom = getattr(cls, "estimate_memory", None)
        if custom is not None:
            device, size = custom(entry)
            return _device_class(device), int(size)
        if not cls.needs_path:
            return "cpu", 0  # a remote client
        from model_adapters.transformers.runtime import pick_device

        return _device_class(pick_device(entry.options.device)), weights_bytes(entry.resolved_path)

    def make_room(self, entry: ModelEntry, cls: type[Engine]) -> None:
        """Evict idle models, least recently used first, until `entry` fits its budget."""
        device, need = self.estimate(entry, cls)
        budget = self.budget(device)
        if budget is None or need == 0:
            return
        deadline = time.monotonic() + self._settings().pool_wait_timeout
        while True:
            victim: Resident | None = None
            with self._catalog_lock, self._cond:
                used = self.used(device)
                if used + need <= budget:
                    return
                others = [
                    (name, r)
                    for name, r in self.resident.items()
                    if r.device == device and name != entry.name
                ]
                idle = [(n, r) for n, r in others if not r.leaving and r.in_flight() == 0]
                if idle:
                    name, victim = min(idle, key=lambda item: item[1].last_use)
                    victim.leaving = True
                    if victim.runtime is not None:
                        victim.runtime.closed = True  # no new request can enter it now
                    self._evict(name)
                elif not others:
                    log.warning(
                        "model %s (%d bytes) exceeds the %s budget of %d bytes; loading anyway",
                        entry.name,
                        need,
                        device,
                        budget,
                    )
                    return
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        busy = ", ".join(n for n, _ in others)
                        raise PoolBusyError(
                            f"no room to load {entry.name!r} in the {device} budget "
                            f"({budget} bytes): models still busy: {busy}"
                        )
            if victim is not None:
                log.info("model pool: evicting idle model %s to load %s", name, entry.name)
                victim.engine.close()
                self.forget(name, victim.engine)
                continue
            # Wait outside the catalog's lock so that busy models can finish their requests.
            with self._cond:
                self._cond.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))

    # --- admin ----------------------------------------------------------------------

    def state(self, name: str) -> str:
        with self._cond:
            res = self.resident.get(name)
            if res is not None:
                if res.leaving or (res.runtime is not None and res.runtime.closed):
                    return "draining"
                return "loaded"
            return "loading" if name in self.loading else "unloaded"

    def describe(
        self, entry: ModelEntry, picked: dict[str, tuple[str, dict[str, str]]]
    ) -> dict[str, Any]:
        """State, memory, last use and requests in flight of one registry entry."""
        with self._cond:
            res = self.resident.get(entry.name)
            last = self.last_use.get(entry.name)
            engine, skipped = picked.get(entry.name, (None, {}))
            return {
                "name": entry.name,
                "kind": entry.kind,
                "state": self.state(entry.name),
                "engine": engine,
                "skipped_engines": skipped,
                "device": res.device if res else None,
                "memory_bytes": res.memory if res else 0,
                "in_flight": res.in_flight() if res else 0,
                "last_used": last,
                "loads": self.loads.get(entry.name, 0),
                "lazy": entry.lazy,
            }
