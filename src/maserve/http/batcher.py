"""Opportunistic batching for a model that implements `prepare` and `predict_batch`.

The requests a worker reads in one event-loop iteration, and those that arrive while a batch
runs, go together, oldest first, with no delay added (no gathering window: a lone request never
waits for company). A batch holds at most MASERVE_MAX_BATCH_SIZE requests (and the model's own
`max_batch_size`, if it declares one), and no more than the model is expected to answer within
MASERVE_BATCH_BUDGET_SECONDS, from its measured time per request: a small model still takes 64 at
once, a compute-bound one (ResNet-50 on a CPU core: 80 ms a request, and a batch of 32 no faster
per image) takes one at a time, so a request waits for the requests ahead of it and not for a
2.6 s batch of 32 that it lands behind (bench/RESULTS.md). A batch runs on the event loop itself
while the model is quick (its previous batch under INLINE_BATCH_SECONDS, every upload at most
INLINE_MAX_BODY_BYTES): the hand-off to the inference thread costs two thread wake-ups per batch,
and on a busy machine each can wait for a core; inline, a small model's p99 drops by a sixth
(bench/RESULTS.md). Otherwise it goes to the inference thread, where each request still gets its
504 at the timeout while the model runs on; a batch that outlives the timeout is "stuck", and the
requests behind it go to the other thread. With MASERVE_BATCH_THREADS=N, up to N batches run at
once on N threads, all taken from the one queue in arrival order: a compute-bound model with one
intra-op thread per batch keeps N cores busy in one worker, with one copy of the model and none
of the imbalance of connections spread over worker processes (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from maserve.decode import decode
from maserve.errors import ServiceError
from maserve.http.calls import Route, batch_results, call_model, encode
from maserve.logs import BATCH_TRACE_IDS, TRACE_ID
from maserve.model import Model

log = logging.getLogger("maserve.app")

# Defaults of MASERVE_MAX_BATCH_SIZE and MASERVE_BATCH_BUDGET_SECONDS (maserve.settings).
MAX_BATCH = 64
BATCH_BUDGET_SECONDS = 0.1
# Weight of the newest batch in the running estimate of the model's seconds per request.
ESTIMATE_WEIGHT = 0.3
INLINE_BATCH_SECONDS = 0.02
INLINE_MAX_BODY_BYTES = 64 * 1024


class Answer(Protocol):
    """Where a request's outcome goes: an asyncio.Future (the ASGI way awaits it), or the short
    lane's request itself (maserve.http.fastlane), which answers its client on the spot, in the
    iteration its batch ends, instead of one loop callback later per request."""

    def done(self) -> bool: ...
    def set_result(self, result: bytes, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True)
class Job:
    """A request waiting for its batch; `future` gets its encoded answer or its error."""

    route: Route
    body: bytes
    boundary: bytes | None
    future: Answer
    trace_id: str | None = None  # the caller's (W3C traceparent), for the model's log lines


@dataclass(slots=True)
class _Batch:
    """Requests handed to an inference thread together; `stuck` once it outlives the request timeout."""

    jobs: list[Job]
    watchdog: asyncio.TimerHandle | None = None
    stuck: bool = False


class Batcher:
    """One worker's batches: what waits for the next one, and where the next one runs."""

    def __init__(self, model: Model, executor: ThreadPoolExecutor, timeout_seconds: float,
                 max_batch_size: int = MAX_BATCH, budget_seconds: float = BATCH_BUDGET_SECONDS,
                 threads: int = 1) -> None:
        self.model = model
        self.executor = executor
        self.timeout_seconds = timeout_seconds
        declared = getattr(model, "max_batch_size", None)
        self.max_batch_size = min(max_batch_size, declared) if isinstance(declared, int) and declared >= 1 else max_batch_size
        self.budget_seconds = budget_seconds
        self.threads = threads  # batches in threads at once (the executor has one more, for a stuck one)
        self._seconds_per_request: float | None = None  # running estimate; None until a batch ran
        self._pending: list[Job] = []  # requests for the next batch
        self._busy_batches = 0  # batches in a thread, not yet stuck
        self._last_batch_seconds = math.inf  # how long the model took for the last batch (none yet)
        self.on_batch: Callable[[int], None] | None = None  # the batch-size metric, when metrics are on

    def submit(self, loop: asyncio.AbstractEventLoop, route: Route, body: bytes,
               boundary: bytes | None) -> asyncio.Future[bytes]:
        """Queue a request for the next batch. Unless every batch thread is busy, the batch starts
        at the end of this loop iteration, with every request the iteration read."""
        future: asyncio.Future[bytes] = loop.create_future()
        self.add(loop, Job(route, body, boundary, future, TRACE_ID.get()))
        return future

    def add(self, loop: asyncio.AbstractEventLoop, job: Job) -> None:
        """Queue `job` for the next batch (as `submit`, with the answer going where `job` says)."""
        self._pending.append(job)
        if len(self._pending) == 1 and self._busy_batches < self.threads:
            loop.call_soon(self._start_if_idle, loop)

    def _start_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start batches while requests wait and a batch thread is free."""
        while self._pending and self._busy_batches < self.threads:
            if not self._start(loop):
                return

    @staticmethod
    def _split(waiting: int, size: int, free: int) -> int:
        """How many of the `waiting` requests the next batch takes when `free` batch threads are
        idle: up to `size`, and with several idle threads an even share, so that each gets work."""
        if free <= 1:
            return size
        return max(1, min(size, -(-waiting // free)))

    def _start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Start one batch; False when nothing was waiting, or when it ran inline (its follow-up is
        scheduled)."""
        waiting = [job for job in self._pending if not job.future.done()]  # not yet timed out
        size = self._split(len(waiting), self.batch_limit(), self.threads - self._busy_batches)
        jobs, self._pending = waiting[:size], waiting[size:]
        if not jobs:
            return False
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        if (self._busy_batches == 0 and self._last_batch_seconds < INLINE_BATCH_SECONDS
                and all(len(job.body) <= INLINE_MAX_BODY_BYTES for job in jobs)):
            self._run_inline(loop, jobs)
            return False
        batch = _Batch(jobs)
        self._busy_batches += 1
        batch.watchdog = loop.call_later(self.timeout_seconds, self._stuck, loop, batch)
        self.executor.submit(self._run_in_thread, loop, batch)
        return True

    def batch_limit(self) -> int:
        """How many waiting requests the next batch takes: the size cap, lowered so that the batch
        is expected to end within the budget (at least one; the first batch is one request)."""
        per_request = self._seconds_per_request
        if per_request is None:
            return 1
        if self.budget_seconds <= 0 or per_request * self.max_batch_size <= self.budget_seconds:
            return self.max_batch_size
        return max(1, int(self.budget_seconds / per_request))

    def _measured(self, seconds: float, size: int) -> None:
        self._last_batch_seconds = seconds
        per_request = seconds / size
        estimate = self._seconds_per_request
        self._seconds_per_request = per_request if estimate is None else (
            estimate + ESTIMATE_WEIGHT * (per_request - estimate))

    def _run_inline(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        """Answer a batch on the event loop (a quick model, small uploads: see INLINE_BATCH_SECONDS)."""
        started = time.perf_counter()
        outcomes = self._answer(jobs)
        self._measured(time.perf_counter() - started, len(jobs))
        _hand_out(jobs, outcomes)
        if self._pending:  # more were waiting than one batch takes: after this iteration's replies are out
            loop.call_soon(self._start_if_idle, loop)

    def _stuck(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        """A batch outlived the request timeout (its requests got their 504): the requests waiting
        behind it go to the other inference thread, as a slow request never stalls the next one."""
        batch.stuck = True
        self._busy_batches -= 1
        self._last_batch_seconds = math.inf  # a slow model: the next batches stay off the event loop
        self._start_if_idle(loop)

    def _run_in_thread(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        """Runs in a worker thread: answer a batch, then wake the event loop once for all of it."""
        started = time.perf_counter()
        outcomes = self._answer(batch.jobs)
        loop.call_soon_threadsafe(self._deliver, loop, batch, outcomes, time.perf_counter() - started)

    def _answer(self, jobs: list[Job]) -> list[bytes | Exception]:
        try:
            # An empty context: a batch on the loop runs in some request's context, one in a thread
            # in the thread's, and the trace ids set for this batch must not reach the next one.
            traced = any(job.trace_id is not None for job in jobs)
            return contextvars.Context().run(self._predict, jobs, traced)
        except Exception:  # a bug here must still answer every request of the batch
            log.exception("unexpected error in a batch")
            return [ServiceError("internal server error") for _ in jobs]

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, batch: _Batch, outcomes: list[bytes | Exception], seconds: float
    ) -> None:
        """On the event loop: hand each request its answer, then start the batch that gathered meanwhile."""
        if not batch.stuck:
            assert batch.watchdog is not None
            batch.watchdog.cancel()
            self._busy_batches -= 1
        self._measured(seconds, len(batch.jobs))
        _hand_out(batch.jobs, outcomes)
        if self._pending and self._busy_batches < self.threads:  # after this iteration's replies are out
            loop.call_soon(self._start_if_idle, loop)

    def _predict(self, jobs: list[Job], traced: bool = False) -> list[bytes | Exception]:
        """Decode and `prepare` each request alone, one `predict_batch` for all that got through,
        then encode each answer: an error anywhere fails only its own request. `traced` (in a
        context of its own): `prepare`'s log lines carry their request's trace id, `predict_batch`'s
        the trace ids of the batch."""
        model = self.model
        outcomes: dict[int, bytes | Exception] = {}
        prepared: dict[int, Any] = {}
        for i, job in enumerate(jobs):
            if traced:
                TRACE_ID.set(job.trace_id)
            try:
                prepared[i] = call_model(model.prepare, decode(job.route.api, job.body, job.boundary, job.route.request))
            except Exception as exc:
                outcomes[i] = exc
        if traced:
            TRACE_ID.set(None)
            BATCH_TRACE_IDS.set(tuple(trace for i in prepared if (trace := jobs[i].trace_id) is not None))
        results = batch_results(model, list(prepared.values()))
        for i, result in zip(prepared, results):
            try:
                outcomes[i] = result if isinstance(result, Exception) else encode(jobs[i].route, result)
            except Exception as exc:
                outcomes[i] = exc
        return [outcomes[i] for i in range(len(jobs))]


def _hand_out(jobs: list[Job], outcomes: list[bytes | Exception]) -> None:
    """Each request its answer or its error (a request that timed out already has its 504)."""
    for job, outcome in zip(jobs, outcomes):
        if job.future.done():
            continue
        if isinstance(outcome, Exception):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
