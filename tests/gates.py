"""Gates a test holds on a transformers runtime's worker, so that what a test checks
never depends on how fast the machine is: the test decides when generation goes on."""

from __future__ import annotations

import threading


class StepGate:
    """No decode step runs until `rows` requests are in the batch (steps are skipped, so
    the worker goes on admitting); then, with `hold`, the worker waits inside its step
    until the test opens the gate, else it goes on at once."""

    def __init__(self, runtime, rows: int, hold: bool = True) -> None:
        self.runtime = runtime
        self.rows = rows
        self.hold = hold
        self.full = threading.Event()
        self.open = threading.Event()
        self._real = runtime._step

    def __enter__(self) -> StepGate:
        def step() -> None:
            if not self.open.is_set():
                if len(self.runtime._batch) < self.rows:
                    return  # back to the loop: admit the next waiting request
                self.full.set()
                if self.hold:
                    self.open.wait(120)
                else:
                    self.open.set()
            self._real()

        self.runtime._step = step
        return self

    def __exit__(self, *exc) -> None:
        self.open.set()
        del self.runtime._step  # the class's method again


class HeldSteps:
    """Lets a runtime's worker run `steps` decode steps, then holds it until the test
    lets go: a generation that cannot finish before the deadline, whatever the speed."""

    def __init__(self, runtime, steps: int) -> None:
        self.runtime = runtime
        self.steps = steps
        self.held = threading.Event()
        self.release = threading.Event()
        self._real = runtime._step

    def __enter__(self) -> HeldSteps:
        def step() -> None:
            if self.steps <= 0 and not self.release.is_set():
                self.held.set()
                self.release.wait(120)
            self.steps -= 1
            self._real()

        self.runtime._step = step
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        del self.runtime._step  # the class's method again
