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
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from maserve.decode import check_content_type
from maserve.errors import InferenceTimeout, RequestTimeout, ServiceError
from maserve.http.batcher import INLINE_MAX_BODY_BYTES, Job
from maserve.http.body import BODY_TIMEOUT_STATE
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
                 "response_complete", "disconnected", "dispatched", "protocol", "more_body", "body", "timer")

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
        self.timer: asyncio.TimerHandle | None = None  # the request timeout's 504, once dispatched

    @property
    def message_event(self) -> FastCycle:
        return self

    def set(self) -> None:
        """uvicorn's connection_lost: a client gone before its body was whole is logged as the
        normal path logs it (499, or the 408 the protocol answered), and leaves the in-flight count."""
        if self.disconnected and not self.dispatched and not self.response_complete:
            self.response_complete = True
            timed_out = self.protocol.scope.get("state", {}).get(BODY_TIMEOUT_STATE)
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
    """The lane of one worker's app; `take` decides per request, `dispatch` runs it."""

    def __init__(self, app: MaserveApp) -> None:
        self.app = app

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
        timeout = app.settings.request_timeout_seconds
        cycle.timer = loop.call_at(loop.time() + timeout, self._time_out, cycle, timeout)
        if app.batcher is not None:
            app.batcher.add(loop, Job(cycle.route, body, cycle.boundary, cycle))
            return
        future = loop.run_in_executor(app.executor, predict_one, app.model, cycle.route, body, cycle.boundary)
        future.add_done_callback(lambda done: _settle(cycle, done))

    def _time_out(self, cycle: FastCycle, timeout: float) -> None:
        """The request timeout: its 504 now (the batch or thread answering later finds it done)."""
        cycle.timer = None
        self.answer(cycle, b"", InferenceTimeout(f"inference did not finish within {timeout:g} s"))

    def answer(self, cycle: FastCycle, body: bytes, exception: BaseException | None) -> None:
        """Answer `cycle`: 200 with `body`, or the error for `exception`; once (later calls are dropped)."""
        if cycle.response_complete:
            return
        if cycle.timer is not None:
            cycle.timer.cancel()
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
            head = [STATUS_LINE[status]]
            for name, value in protocol.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [_CONTENT_TYPE, b"x-request-id: ", cycle.request_id, b"\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\n"]
            if not cycle.keep_alive:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", body]
            protocol.transport.write(b"".join(head))
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
