"""The short path for the common request: a small POST to a model's api, read and answered by the
connection's protocol itself, with no ASGI request cycle, task, scope messages or events.

On a small model uvicorn's per-request machinery costs about as much as the model (bench/RESULTS.md,
"Where a small model's request goes": the canned answer on uvicorn's protocol costs 63 us of CPU a
request more than on a bare httptools protocol, 93 us of model). A request takes this lane only
when nothing about it needs more than reading a known-size body and answering once: an idle
keep-alive HTTP/1.1 connection, POST to a plain (not streaming) api of a loaded model,
a Content-Length up to INLINE_MAX_BODY_BYTES, no Transfer-Encoding, Expect, Upgrade or
traceparent, an acceptable Content-Type, the worker not stopping. It goes into the next batch of
a batching model, or to the inference thread (`predict_one`, as the ASGI way calls it) of any
other. Anything else, errors before the model included, goes the ASGI way as before. The answer is the same bytes either way: the same
headers in the same order (uvicorn's date first), the same access line and metrics, the same 504
at the request timeout, and uvicorn's own bookkeeping (keep-alive timer, pipelined requests,
graceful shutdown, the in-flight count) sees a `FastCycle` where it expects a request cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from maserve.decode import check_content_type
from maserve.errors import InferenceTimeout, RequestTimeout, ServiceError
from maserve.http.batcher import INLINE_MAX_BODY_BYTES, Job
from maserve.http.calls import Route, predict_one
from maserve.logs import fields

if TYPE_CHECKING:
    from maserve.app import MaserveApp

log = logging.getLogger("maserve.app")

_CONTENT_TYPE = b"content-type: application/json\r\n"


class FastCycle:
    """One fast-lane request, in the attributes uvicorn's protocol reads of a request cycle
    (`response_complete`, `keep_alive`, `disconnected`, `message_event.set()` on a lost
    connection, `cancel()` on a forced exit: it sits in the protocol's task set while in flight),
    and the batcher's answer slot (`done`, `set_result`, `set_exception`: maserve.http.batcher.Answer),
    so that its batch answers it directly."""

    __slots__ = ("route", "path", "boundary", "request_id", "started", "parts", "keep_alive", "response_started",
                 "response_complete", "disconnected", "dispatched", "protocol", "more_body", "body")

    def __init__(self, protocol: Any, route: Route, path: str, boundary: bytes | None, request_id: bytes,
                 started: float, keep_alive: bool) -> None:
        self.protocol = protocol
        self.route = route
        self.path = path
        self.boundary = boundary
        self.request_id = request_id
        self.started = started
        self.parts: list[bytes] = []
        self.keep_alive = keep_alive
        self.response_started = self.response_complete = self.disconnected = self.dispatched = False
        self.more_body = True
        self.body = b""  # uvicorn's on_body is never reached for this cycle (the protocol keeps `parts`)

    @property
    def message_event(self) -> FastCycle:
        return self

    def set(self) -> None:
        """uvicorn's connection_lost: a client gone before its body was whole is logged as the
        normal path logs it (499, or the 408 the protocol answered), and leaves the in-flight count."""
        if self.disconnected and not self.dispatched and not self.response_complete:
            self.response_complete = True
            timed_out = self.protocol.body_timed_out
            lane: FastLane = self.protocol.fast_lane
            lane.finished(self)
            lane.app.log_request(self.request_id, "POST", self.path, 499 if timed_out is None else 408, self.started,
                                 0, None if timed_out is None else RequestTimeout(timed_out))

    def cancel(self) -> None:
        """uvicorn cancels its tasks when it is forced to exit: nothing to cancel here."""

    # -- the batcher's answer slot ----------------------------------------------------------
    def done(self) -> bool:
        """Answered already (at the request timeout): its batch leaves it out, or its answer is dropped."""
        return self.response_complete

    def set_result(self, body: bytes) -> None:
        self.protocol.fast_lane.answer(self, body, None)

    def set_exception(self, exception: BaseException) -> None:
        self.protocol.fast_lane.answer(self, b"", exception)


class FastLane:
    """The lane of one worker's app; `take` decides per request, `dispatch` runs it.

    The request timeout is one timer for the whole lane, not one per request: every request
    gets the same timeout, so their deadlines come in the order they were dispatched, and a
    queue of (deadline, request) with a timer at its head's deadline answers each 504 on time.
    Answered requests leave the queue from its head as new ones come (they finish about in
    order: one batch queue), and all at once should a slow one hold the head (PRUNE_AT)."""

    PRUNE_AT = 4096  # queued deadlines past which answered requests behind the head are dropped

    def __init__(self, app: MaserveApp) -> None:
        self.app = app
        self._deadlines: deque[tuple[float, FastCycle]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._prune_at = self.PRUNE_AT
        self._defaults: list[tuple[bytes, bytes]] | None = None  # the server's default headers, and as bytes
        self._default_head = b""

    def take(self, protocol: Any) -> FastCycle | None:
        """A FastCycle for the request whose headers `protocol` just parsed, or None (the ASGI way)."""
        app = self.app
        cycle = protocol.cycle
        if (cycle is not None and not cycle.response_complete) or app.stopping.is_set() or not app.ready():
            return None
        parser = protocol.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        path = protocol.url.split(b"?", 1)[0]
        if b"%" in path or b"#" in path:
            return None
        route = app.fast_route(path.decode("ascii", "replace"))
        if route is None:
            return None
        length = -1
        content_type = request_id = b""
        for name, value in protocol.headers:
            if name == b"content-length":
                if not value.isdigit():
                    return None
                length = int(value)
            elif name == b"content-type":
                content_type = value
            elif name == b"x-request-id":
                request_id = value
            elif name in (b"transfer-encoding", b"expect", b"traceparent"):
                return None
        if not 0 <= length <= INLINE_MAX_BODY_BYTES:
            return None
        try:
            boundary = check_content_type(route.api, content_type)
        except ServiceError:
            return None  # answered the usual way, with its usual error
        fast = FastCycle(protocol, route, route.api.url, boundary, app.checked_request_id(request_id),
                         time.perf_counter(), parser.should_keep_alive())
        protocol.cycle = fast
        protocol.tasks.add(fast)
        if protocol.publish is not None:
            protocol.publish(len(protocol.tasks))
        return fast

    def finished(self, cycle: FastCycle) -> None:
        protocol = cycle.protocol
        protocol.tasks.discard(cycle)
        if protocol.publish is not None:
            protocol.publish(len(protocol.tasks))

    def dispatch(self, cycle: FastCycle) -> None:
        """The body is whole: into the next batch (or to the inference thread), with the request
        timeout's 504 armed."""
        cycle.dispatched = True
        body = cycle.parts[0] if len(cycle.parts) == 1 else b"".join(cycle.parts)
        cycle.parts = []
        app = self.app
        loop = cycle.protocol.loop
        self._watch(loop, cycle)
        if app.batcher is not None:
            app.batcher.add(loop, Job(cycle.route, body, cycle.boundary, cycle))
            return
        future = loop.run_in_executor(app.executor, predict_one, app.model, cycle.route, body, cycle.boundary)
        future.add_done_callback(lambda done: _settle(cycle, done))

    def _watch(self, loop: asyncio.AbstractEventLoop, cycle: FastCycle) -> None:
        """Queue `cycle`'s deadline (the request timeout from now), arming the timer if none is."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].response_complete:
            deadlines.popleft()
        if len(deadlines) >= self._prune_at:  # a slow request at the head: drop the answered ones behind it
            self._deadlines = deadlines = deque(item for item in deadlines if not item[1].response_complete)
            self._prune_at = max(self.PRUNE_AT, 2 * len(deadlines))
        deadline = loop.time() + self.app.settings.request_timeout_seconds
        deadlines.append((deadline, cycle))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._time_out, loop)

    def _time_out(self, loop: asyncio.AbstractEventLoop) -> None:
        """The request timeout: a 504 now for each request past its deadline (the batch or thread
        answering later finds it done), then the timer at the next deadline."""
        self._timer = None
        deadlines = self._deadlines
        now = loop.time()
        timeout = self.app.settings.request_timeout_seconds
        while deadlines and (deadlines[0][1].response_complete or deadlines[0][0] <= now):
            _, cycle = deadlines.popleft()
            if not cycle.response_complete:
                self.answer(cycle, b"", InferenceTimeout(f"inference did not finish within {timeout:g} s"))
        if deadlines:
            self._timer = loop.call_at(deadlines[0][0], self._time_out, loop)

    def answer(self, cycle: FastCycle, body: bytes, exception: BaseException | None) -> None:
        """Answer `cycle`: 200 with `body`, or the error for `exception`; once (later calls are dropped)."""
        if cycle.response_complete:
            return
        try:
            self._reply(cycle, body, exception)
        except Exception:  # a bug here must not leave the client waiting on an open connection
            log.exception("unexpected error answering a request", extra=fields(request_id=cycle.request_id.decode()))
            cycle.protocol.transport.close()

    def _reply(self, cycle: FastCycle, body: bytes, exception: BaseException | None) -> None:
        status = 200
        error: ServiceError | None = None
        if exception is not None:
            if isinstance(exception, ServiceError):
                error = exception
            else:
                log.error("unexpected error", exc_info=exception, extra=fields(request_id=cycle.request_id.decode()))
                error = ServiceError("internal server error")
            status, body = error.status, error.body()
        protocol = cycle.protocol
        if self.app.stopping.is_set():
            cycle.keep_alive = False  # as the ASGI way answers during the grace period
        cycle.response_started = cycle.response_complete = True
        self.finished(cycle)
        if not protocol.transport.is_closing():
            defaults = protocol.server_state.default_headers
            if defaults is not self._defaults:  # uvicorn's tick makes a new list each second (its date)
                self._defaults = defaults
                self._default_head = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            close = b"" if cycle.keep_alive else b"connection: close\r\n"
            protocol.transport.write(b"".join((
                STATUS_LINE[status], self._default_head, _CONTENT_TYPE, b"x-request-id: ", cycle.request_id,
                b"\r\ncontent-length: ", b"%d\r\n" % len(body), close, b"\r\n", body)))
            if not cycle.keep_alive:
                protocol.transport.close()
        self.app.log_request(cycle.request_id, "POST", cycle.path, status, cycle.started, len(body), error)
        protocol.on_response_complete()


def _settle(cycle: FastCycle, future: asyncio.Future[bytes]) -> None:
    """The inference thread's answer (a model without batches), unless the timeout answered first.
    Only a stopping executor cancels its futures: the request timeout's 504 then answers."""
    if future.cancelled():
        return
    exception = future.exception()
    if exception is None:
        cycle.set_result(future.result())
    else:
        cycle.set_exception(exception)
