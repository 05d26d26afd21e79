"""maserve's HTTP protocol: uvicorn's httptools protocol with one write per loop iteration, bounded
connections (maserve.http.limits), read and send timeouts, and JSON for the errors it answers itself.

uvicorn times out only idle keep-alive connections: a client that sends part of its headers, or
never reads its answer, holds its connection (and the memory behind it) for as long as it likes. A
sweep once a second (per worker, not a timer per request: the request path pays two float stores)
closes a connection whose headers have not all arrived within MASERVE_HEADER_TIMEOUT_SECONDS (with
a `408` JSON reply), and one whose client has read nothing of its answer for
MASERVE_SEND_TIMEOUT_SECONDS. The body's own timeout is the app's (maserve.http.body), so its `408`
is an ordinary, logged error reply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from maserve.errors import MalformedRequest, Overloaded, RequestTimeout, ServiceError
from maserve.http.body import BODY_TIMEOUT_STATE
from maserve.http.fastlane import FastCycle, FastLane
from maserve.http.limits import RESERVED_FILES, RETRY_AFTER_SECONDS, URGENT_SLOW_HEADERS_SECONDS, Guard
from maserve.logs import fields

log = logging.getLogger("maserve.server")

SWEEP_SECONDS = 1.0


class _OneWriteTransport:
    """A transport that sends what one loop iteration writes with one write: uvicorn writes a
    response's head and body separately, two system calls and two wake-ups of the client per
    request; together they cost about 4% of maserve's throughput on a small model (bench/).
    One loop callback per iteration sends every connection's writes (`_Outbox`), not one per
    connection: a batch's 30 answers go out in one callback. The calls uvicorn and maserve make
    per request are methods here, not `__getattr__` lookups."""

    __slots__ = ("_transport", "_parts", "_outbox")

    def __init__(self, transport: asyncio.Transport, outbox: "_Outbox") -> None:
        self._transport = transport
        self._parts: list[bytes] = []
        self._outbox = outbox

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._outbox.add(self)
        self._parts.append(data)

    def send(self) -> None:
        parts = self._parts
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        if not self._transport.is_closing():  # a client gone meanwhile: nothing to send
            self._transport.write(data)

    def close(self) -> None:
        self.send()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def abort(self) -> None:
        self._parts.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Outbox:
    """The connections with writes waiting in this loop iteration, sent by one callback at its end."""

    def __init__(self) -> None:
        self._waiting: list[_OneWriteTransport] = []

    def add(self, transport: _OneWriteTransport) -> None:
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self._send)
        self._waiting.append(transport)

    def _send(self) -> None:
        waiting, self._waiting = self._waiting, []
        for transport in waiting:
            try:
                transport.send()
            except Exception:  # one broken connection must not keep the others' answers back
                log.exception("sending an answer failed")
                transport.abort()


def raw_reply(error: ServiceError, extra: tuple[bytes, ...] = ()) -> bytes:
    """A whole HTTP/1.1 error reply with a JSON body, for answers written past the app."""
    body = error.body()
    head = [b"HTTP/1.1 %d %s" % (error.status, _REASONS.get(error.status, b"Error")),
            b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close", *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def _refusal(error: ServiceError) -> Callable[..., Any]:
    """An ASGI app answering `error` with Retry-After and closing the connection, body unread."""
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", str(RETRY_AFTER_SECONDS).encode()), (b"connection", b"close")]

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


class MaserveHttpProtocol(HttpToolsProtocol):
    """One client connection. `guard` (the worker's caps) and `publish` (its in-flight count for
    the master) are set on the class by the worker before it serves."""

    guard: Guard | None = None
    publish: Callable[[int], None] | None = None
    on_connections_changed: Callable[[], None] | None = None  # the worker's accept balance (maserve.http.accept)
    fast_lane: FastLane | None = None  # the worker's short path for small requests (maserve.http.fastlane)
    outbox = _Outbox()  # the worker's writes waiting for the end of the loop iteration

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWriteTransport(transport, self.outbox))  # type: ignore[arg-type]
        if self.on_connections_changed is not None:
            self.on_connections_changed()
        self._headers_since: float | None = None
        self._body_since: float | None = None
        self._headers_listed = self._body_listed = False  # in the guard's lists of what is still arriving
        self._read_at = 0.0  # when the current read began (loop time)
        self._body_bytes = 0
        self._unsent: tuple[int, float] | None = None  # write buffer size, and since when it is stuck
        self._over_cap = False
        self._idle_since: float | None = None  # between requests: since when (the sweep's keep-alive limit)
        guard = self.guard
        if guard is None:
            return
        guard.watch(self.connections, self.loop, _sweep, SWEEP_SECONDS)
        count = len(self.connections)
        if count > guard.limits.max_connections:
            now = self.loop.time()
            room = guard.make_room(count, now)
            if not room and count > guard.limits.max_connections + RESERVED_FILES // 2:
                # the descriptors kept to answer with are running out: a younger slowloris goes too
                room = guard.make_room(count, now, URGENT_SLOW_HEADERS_SECONDS)
                if not room:
                    guard.refused(count, len(self.tasks), "connections")
                    self.transport.close()
                    return
            self._over_cap = not room  # its request is refused (unless it is the health check)
        # A connection that sends nothing is idle from the start: it expires at the keep-alive
        # limit (uvicorn would hold it for good) and can make room for a newer one at the cap.
        self._idle_since = now = self.loop.time()
        guard.mark_idle(self, now)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_connections_changed is not None:
            self.on_connections_changed()
        guard = self.guard
        if guard is not None:
            guard.mark_busy(self)
            guard.headers_done(self)
            guard.body_done(self)
            guard.check_eased(len(self.connections), len(self.tasks))

    def close_idle(self) -> bool:
        """Close this connection if it is idle between requests (the cap needs room)."""
        if self._idle_since is None or (self.cycle is not None and not self.cycle.response_complete):
            return False
        self._unset_keepalive_if_required()
        self.transport.close()
        return True

    def close_slow_headers(self, seconds: float) -> bool:
        """Answer 408 and close: its headers have been arriving for `seconds`, and the cap needs room."""
        if self._headers_since is None or self.transport.is_closing():
            return False
        self._headers_since = None
        self.transport.write(raw_reply(RequestTimeout(
            f"the request's headers were still arriving after {seconds:.1f} s and the server is at its "
            "connection limit")))
        self.transport.close()
        return True

    def close_slow_body(self, seconds: float) -> bool:
        """Answer 408 and close: its body is arriving too slowly, and the in-flight cap needs room."""
        cycle = self.cycle
        if self._body_since is None or self.transport.is_closing() or cycle is None or cycle.response_started:
            return False
        self._body_since = None
        self._end_body_late(f"the request's body had sent {self._body_bytes} bytes in {seconds:.1f} s and the "
                            "server is at its in-flight limit (MASERVE_MAX_IN_FLIGHT)")
        return True

    def _end_body_late(self, message: str) -> None:
        """Answer 408 with `message` and close; the app sees the client go and logs the request as
        this 408 (maserve.app reads the message from the scope's state)."""
        if type(self.cycle) is FastCycle:
            self.body_timed_out = message  # the lane logs it (FastCycle.set)
        else:
            self.scope["state"][BODY_TIMEOUT_STATE] = message
        self.transport.write(raw_reply(RequestTimeout(message)))
        self.transport.close()

    def body_bytes(self) -> int:
        return self._body_bytes

    def _unset_keepalive_if_required(self) -> None:
        super()._unset_keepalive_if_required()  # uvicorn's timer, armed only without a guard
        if self._idle_since is not None:
            self._idle_since = None
            if self.guard is not None:
                self.guard.mark_busy(self)

    def on_response_complete(self) -> None:
        """uvicorn's, less its keep-alive timer: with a guard, the once-a-second sweep closes a
        connection idle for the keep-alive limit (check_stalled), instead of a timer made and
        cancelled per request."""
        guard = self.guard
        if guard is None:
            super().on_response_complete()
            return
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waited for this answer
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = now = self.loop.time()
        guard.mark_idle(self, now)

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers an unparsable request in text/plain; clients here get JSON like every error."""
        if not self.transport.is_closing():
            self.transport.write(raw_reply(MalformedRequest(f"not a valid HTTP/1.1 request: {msg}")))
        self.transport.close()

    # -- the request ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """uvicorn's, then what is still arriving goes into the guard's lists (oldest first, for
        the caps to find a slowloris or a stalled upload): a request whose headers and body came
        in this one read, as nearly all do, is never listed."""
        self._read_at = self.loop.time()
        super().data_received(data)
        guard = self.guard
        if guard is None:
            return
        if self._headers_since is not None:
            if not self._headers_listed:
                guard.headers_started(self, self._headers_since)
                self._headers_listed = True
        elif self._body_since is not None and not self._body_listed and (
                self.cycle is not None and not self.cycle.response_complete):  # not a WebSocket's upgrade
            guard.body_started(self, self._body_since)
            self._body_listed = True

    def on_message_begin(self) -> None:
        """uvicorn's, less the ASGI scope: made in on_headers_complete for a request that goes the
        ASGI way, none for the short lane's."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = None  # type: ignore[assignment]
        self.body_timed_out: str | None = None
        self._headers_since = self._read_at

    def on_headers_complete(self) -> None:
        self._headers_since = None
        guard = self.guard
        if self._headers_listed and guard is not None:
            guard.headers_done(self)
            self._headers_listed = False
        self._body_since = now = self._read_at  # until on_message_complete (at once for a GET)
        self._body_bytes = 0
        refusal = None
        if guard is not None:
            if self._over_cap or (len(self.tasks) >= guard.limits.max_in_flight and not guard.make_request_room(
                    len(self.connections), len(self.tasks), now)):
                refusal = self._refusal(guard)
        if refusal is None and self.fast_lane is not None and self.fast_lane.take(self) is not None:
            return
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, as uvicorn makes it, for what was parsed
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        if refusal is None:
            super().on_headers_complete()
            return
        app, self.app = self.app, refusal
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        cycle = self.cycle
        if type(cycle) is FastCycle:
            cycle.parts.append(body)  # a known, small size (fastlane.take): no flow control needed
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_since = None
        if self._body_listed and self.guard is not None:
            self.guard.body_done(self)
            self._body_listed = False
        cycle = self.cycle
        if type(cycle) is FastCycle:
            if not cycle.dispatched and self.fast_lane is not None:
                self.fast_lane.dispatch(cycle)
            return
        super().on_message_complete()

    def _refusal(self, guard: Guard) -> Callable[..., Any] | None:
        if self.url.split(b"?", 1)[0] == guard.health_path.encode():
            return None  # the platform's probe is answered whatever the load
        connections, in_flight = len(self.connections), len(self.tasks)
        if self._over_cap:
            guard.refused(connections, in_flight, "connections")
            message = (f"this worker holds {connections} connections (MASERVE_MAX_CONNECTIONS "
                       f"{guard.limits.max_connections}), none idle: retry in {RETRY_AFTER_SECONDS} s")
        else:
            guard.refused(connections, in_flight, "requests in flight")
            message = (f"this worker has {in_flight} requests in flight (MASERVE_MAX_IN_FLIGHT "
                       f"{guard.limits.max_in_flight}): retry in {RETRY_AFTER_SECONDS} s")
        return _refusal(Overloaded(message))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self._task_done)
        self.tasks.add(task)
        if self.publish is not None:
            self.publish(len(self.tasks))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.publish is not None:
            self.publish(len(self.tasks))

    # -- the sweep ------------------------------------------------------------------------------
    def check_stalled(self, now: float, guard: Guard) -> None:
        """Close the connection if it sat idle for the keep-alive limit, its headers are overdue,
        or its client reads nothing."""
        if self.transport.is_closing():
            return
        idle = self._idle_since
        if idle is not None and now - idle >= self.timeout_keep_alive:
            self.timeout_keep_alive_handler()
            return
        since = self._headers_since
        if since is not None and now - since >= guard.limits.header_timeout:
            seconds = guard.limits.header_timeout
            log.warning("request headers incomplete: answered 408 and closed",
                        extra=fields(client=_client(self.client), seconds=seconds,
                                     error_code=RequestTimeout.error_code))
            self.transport.write(raw_reply(RequestTimeout(
                f"the request's headers did not arrive within {seconds:g} s (MASERVE_HEADER_TIMEOUT_SECONDS)")))
            self.transport.close()
            return
        since = self._body_since
        if since is not None and now - since >= guard.limits.body_timeout:
            self._body_since = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                seconds = guard.limits.body_timeout
                self._end_body_late(f"the request's body did not arrive within {seconds:g} s "
                                    "(MASERVE_BODY_TIMEOUT_SECONDS)")
                return
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            self._unsent = None
        elif self._unsent is None or unsent < self._unsent[0]:
            self._unsent = (unsent, now)
        elif now - self._unsent[1] >= guard.limits.send_timeout:
            log.warning("the client read nothing of its answer: connection closed",
                        extra=fields(client=_client(self.client), unsent_bytes=unsent,
                                     seconds=guard.limits.send_timeout))
            self.transport.abort()


def _client(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "unknown"


def _sweep(connections: set[Any], now: float, guard: Guard) -> None:
    for protocol in list(connections):
        check = getattr(protocol, "check_stalled", None)  # WebSocket protocols are in the set too
        if check is not None:
            check(now, guard)
