"""Server-wide readiness across gunicorn's forked workers.

Each worker loads the model on its own. If /health answered for the worker that happens to take
the connection, a probe could see 200 from a loaded worker and then 503 from one still loading.
The gate, made in the master before the fork, counts loaded workers in shared memory: the server is
healthy once every worker it started with has loaded and warmed up. A worker restarted later still
answers 503 itself until it has reloaded (its requests wait for the model).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from typing import Callable


class StartupGate:
    """Counts the workers that finished loading, in memory shared with the forked workers."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._loaded = multiprocessing.RawValue("i", 0)
        self._lock = multiprocessing.Lock()
        self._creator_pid = os.getpid()

    def worker_loaded(self) -> None:
        with self._lock:
            self._loaded.value += 1

    def all_loaded(self) -> bool:
        """True once every initial worker loaded; also when this process was not forked from the
        gate's creator (an app built per process, or run in process): then each answers for itself."""
        if os.getpid() == self._creator_pid:
            return True
        return self._loaded.value >= self._workers


class StopFlag:
    """Set by the master when the stop signal arrives, read by every worker (shared memory).

    During the grace period each answer then carries `Connection: close`: clients reconnect (new
    connections are still accepted) instead of keeping idle connections that the drain would close
    under a request they are about to send.
    """

    def __init__(self) -> None:
        self._value = multiprocessing.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


class Drain:
    """A worker's drain, once its stop signal came: long-lived exchanges (streams, WebSockets) may
    run until `deadline` (loop time), a margin before gunicorn's hard stop, then end cleanly."""

    MARGIN_SECONDS = 1.0

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.started: asyncio.Event | None = None  # made on the worker's loop
        self._watchers: set[Callable[[], None]] = set()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) when the drain begins: cheaper per event than a task
        waiting on `event()`."""
        self._watchers.add(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        self._watchers.discard(callback)

    def event(self) -> asyncio.Event:
        if self.started is None:
            self.started = asyncio.Event()
        return self.started

    def begin(self, seconds: float) -> None:
        """Called on the event loop when the drain starts."""
        if self.deadline is None:
            margin = min(self.MARGIN_SECONDS, seconds / 2)
            self.deadline = asyncio.get_running_loop().time() + seconds - margin
            self.event().set()
            for callback in list(self._watchers):
                callback()
