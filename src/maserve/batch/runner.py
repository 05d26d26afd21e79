"""Sending the job's requests: `concurrency` keep-alive connections (spread over the URLs when
several instances share the run), each taking the next request from one stream of work.

One event loop (uvloop where installed) and httptools' response parser: the client shares the
machine with the service it feeds, so each request must cost it little. Threads with http.client
cost ~700 us of CPU per MNIST request here and left the service a fifth of its speed; this loop
costs a fraction of that (bench/batch.py measures the run against wrk on the same service).

A request that meets a connection error or a 503 is retried with bounded exponential backoff
(RETRY_DELAYS), then fails with the last reason; a keep-alive connection the server had closed just
as it was reused (the race every HTTP client meets) is reopened at once without counting as a
retry. No answer within `timeout` fails the request without a retry: the service had its time.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httptools

from maserve.check.client import Endpoint, unverified_tls

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds before each retry: 15.5 s at most, then FAILED
RETRIED_STATUSES = frozenset({503})


@dataclass(frozen=True)
class Answer:
    """What one request came to: a 2xx body, or the reason it failed."""

    ok: bool
    status: int | None
    body: bytes
    error: str = ""
    connection_error: bool = False  # no HTTP answer at all: retried like a 503


@dataclass
class Work:
    """One request to send, and what to do with its answer."""

    body: bytes
    headers: dict[str, str]
    done: Callable[[Answer], None]


@dataclass
class Counters:
    """Progress, read by the progress bar while the run goes on: requests answered (or given up),
    how many failed (those never sent, like an unreadable file, count too), retries."""

    done: int = 0
    failed: int = 0
    retries: int = 0
    total: int = 0  # grows as CSV files are read
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed_unsent(self) -> None:
        with self.lock:
            self.done += 1
            self.failed += 1


class _Closed(ConnectionError):
    """The server closed the connection before answering."""


class Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.open = False
        self.keep_alive = True
        self.requests = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"unparseable answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(_Closed("the server closed the connection"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.chunks = []

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.chunks)))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, head: bytes, body: bytes, timeout: float) -> tuple[int, bytes]:
        assert self.transport is not None
        self.requests += 1
        self.waiter = self.loop.create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        timer = self.loop.call_later(timeout, self._fail, TimeoutError())
        try:
            return await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.open = False


class Sender:
    """One stream of requests over one connection (reopened when it closes) to one endpoint."""

    def __init__(self, endpoint: Endpoint, method: str, path: str, timeout: float, counters: Counters) -> None:
        self.endpoint, self.timeout, self.counters = endpoint, timeout, counters
        self.request_line = f"{method} {path} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
        self.conn: Connection | None = None
        self.ssl: ssl.SSLContext | None = unverified_tls() if endpoint.https else None

    async def send(self, body: bytes, headers: dict[str, str]) -> Answer:
        head = (self.request_line + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        last = ""
        for attempt in range(len(RETRY_DELAYS) + 1):
            if attempt:
                with self.counters.lock:
                    self.counters.retries += 1
                await asyncio.sleep(RETRY_DELAYS[attempt - 1] * random.uniform(0.8, 1.2))
            answer, stale = await self._once(head, body)
            if stale:  # the server had closed the idle connection: reopen at once, no retry counted
                answer, _ = await self._once(head, body)
            if answer.status in RETRIED_STATUSES or answer.connection_error:
                last = answer.error
                continue
            return answer
        return Answer(False, None, b"", f"{last} (gave up after {len(RETRY_DELAYS)} retries)")

    async def _once(self, head: bytes, body: bytes) -> tuple[Answer, bool]:
        """The answer (a failed one after a connection error or a timeout), and whether the failure
        was a reused connection that the server had already closed."""
        loop = asyncio.get_running_loop()
        reused = self.conn is not None and self.conn.open and self.conn.requests > 0
        try:
            if self.conn is None or not self.conn.open:
                _, self.conn = await asyncio.wait_for(loop.create_connection(
                    lambda: Connection(loop), self.endpoint.host, self.endpoint.port, ssl=self.ssl), self.timeout)
            status, data = await self.conn.request(head, body, self.timeout)
        except TimeoutError:
            self.close()
            return Answer(False, None, b"", f"no answer within --timeout {self.timeout:g} s"), False
        except OSError as exc:  # ConnectionError, refused, reset, unreachable
            self.close()
            reason = f"connection to {self.endpoint.host}:{self.endpoint.port} failed: {type(exc).__name__}"
            return Answer(False, None, b"", f"{reason}: {exc}" if str(exc) else reason, True), (
                reused and isinstance(exc, (_Closed, ConnectionResetError, BrokenPipeError)))
        if not self.conn.keep_alive:
            self.close()
        if 200 <= status < 300:
            return Answer(True, status, data), False
        return Answer(False, status, data, error_message(status, data)), False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def error_message(status: int, body: bytes) -> str:
    """The service's `error_msg` when it sent one (ModelArts' error body), else status and body."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict):
        for key in ("error_msg", "error_message", "message", "error"):
            if isinstance(value.get(key), str) and value[key]:
                return value[key]
    text = body[:200].decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {text}" if text else "")


def run(work: Iterator[Work], endpoints: list[Endpoint], method: str, path: str, concurrency: int,
        timeout: float, counters: Counters) -> None:
    """Send every item of `work` over `concurrency` connections; returns when all are answered.
    The `done` callbacks (result file, manifest line) run on the loop itself: handing them to a
    writer thread was measured slower (bench/batch.py: -5% with results on disk, -15% on tmpfs),
    the GIL and the thread's wake-ups costing more than the overlap saves. An exception from
    `work` or from a `done` callback stops the run and is raised here."""

    async def stream(endpoint: Endpoint) -> None:
        sender = Sender(endpoint, method, path, timeout, counters)
        try:
            while (item := next(work, None)) is not None:
                answer = await sender.send(item.body, item.headers)
                with counters.lock:
                    counters.done += 1
                    counters.failed += not answer.ok
                item.done(answer)
        finally:
            sender.close()

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for i in range(concurrency):
                group.create_task(stream(endpoints[i % len(endpoints)]))

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(main())
        except BaseExceptionGroup as group:  # the TaskGroup's: the first cause is the news
            raise group.exceptions[0] from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return None
    return uvloop.new_event_loop
