"""Streaming replies (Server-Sent Events): a model's iterator becomes `text/event-stream` events.

For an api whose response Content-type is `text/event-stream`, `predict` may return an iterator,
a generator, or an async generator: each item is sent as one event the moment it is produced
(the transport writes what one loop iteration sent, nothing is held longer). Items are JSON-encoded
unless they are already text (OpenAI's closing `[DONE]` is a string). Anything else `predict`
returns is a normal JSON reply.

Timeouts follow the platform's streaming semantics: MASERVE_REQUEST_TIMEOUT_SECONDS bounds the
wait for the first event and for each next one (every event resets it), MASERVE_STREAM_TIMEOUT_SECONDS
the whole stream. Until the first event a failure is a plain JSON error reply with its status; after
it the stream ends with an `error` event carrying `error_code` and `error_msg`, never silently.

A sync generator runs in the stream threads (one `next()` at a time, so it may block between
items); an async generator runs on the event loop. A client that disconnects, a timeout or the end
of the drain window closes the generator: `GeneratorExit` (or, for an async generator between
items, cancellation) reaches the model within the item it is producing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from maserve.readiness import Drain

from maserve.errors import InferenceTimeout, ModelError, ServiceError, ServiceStopping
from maserve.http.calls import model_failure
from maserve.jsonout import to_json

log = logging.getLogger("maserve.app")

# Response headers of a stream: no caching, and no buffering by proxies (nginx reads the last one).
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = object()  # the iterator is exhausted


PER_EVENT, WHOLE_STREAM, DRAIN = "per_event", "whole_stream", "drain"  # the limits a stream runs under


class StreamTimeout(InferenceTimeout):
    """No next event within the per-event timeout, or the whole stream past its bound."""

    error_code = "MASERVE.STREAM_TIMEOUT"

    def __init__(self, message: str, limit: str = PER_EVENT) -> None:
        super().__init__(message)
        self.limit = limit  # PER_EVENT or WHOLE_STREAM


def is_stream(result: Any) -> bool:
    """Whether `predict` answered with something to stream (an iterator, not a list or a dict)."""
    return isinstance(result, (Iterator, AsyncIterator))


def encode_event(item: Any) -> bytes:
    """One SSE event: `data:` lines (text as it is, anything else as JSON), then a blank line."""
    if isinstance(item, bytes):
        try:
            item = item.decode()
        except UnicodeDecodeError:
            raise ModelError("the model streamed bytes that are not UTF-8 text") from None
    if not isinstance(item, str):
        item = to_json(item, "streamed item")  # strict: NaN ends the stream with an error event
    lines = item.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode(errors="backslashreplace") + b"\n"


def error_event(error: ServiceError) -> bytes:
    """The event that ends a stream on failure: `event: error` with the JSON error body."""
    return b"event: error\ndata: " + error.body() + b"\n\n"


class EventSource:
    """The model's iterator, advanced one item at a time off (sync) or on (async) the event loop.

    A sync generator's `next()` runs in a stream thread, which hands the item back with one
    `call_soon_threadsafe` (no concurrent.futures Future chained to an asyncio one: this hop is
    paid per event). `close()` never runs the generator in two threads: while a `next()` is in
    progress, the thread that runs it closes the generator when it returns.
    """

    def __init__(self, iterator: Iterator[Any] | AsyncIterator[Any], executor: Executor,
                 context: contextvars.Context | None = None) -> None:
        self._iterator = iterator
        self._executor = executor
        # The request's context (its trace id) for a sync generator's steps in the stream threads:
        # a copy per step, since one step's thread may still be leaving it as the next one enters.
        self._context = context
        self._pending: asyncio.Future[Any] | None = None  # the item being produced
        self._lock = threading.Lock()
        self._running = False  # a stream thread is in next() (guarded by _lock)
        self._closed = False

    def next_item(self) -> asyncio.Future[Any]:
        """A future of the next item (or DONE); a model exception becomes a ModelError."""
        if isinstance(self._iterator, AsyncIterator):
            self._pending = asyncio.ensure_future(_anext(self._iterator))
            return self._pending
        loop = asyncio.get_running_loop()
        future = self._pending = loop.create_future()
        with self._lock:
            self._running = True
        if self._context is None:
            self._executor.submit(self._advance, loop, future)
        else:
            self._executor.submit(self._context.copy().run, self._advance, loop, future)
        return future

    def _advance(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        """In a stream thread: one `next()`, its outcome handed to the loop."""
        try:
            item, failure = _next(self._iterator), None
        except BaseException as exc:  # a ServiceError (ModelError already logged), or the thread's end
            item, failure = None, exc
        with self._lock:
            self._running = False
            closed = self._closed
        if closed:  # nobody waits for this item any more
            _close(self._iterator)
            item, failure = DONE, None
        try:
            loop.call_soon_threadsafe(_settle, future, item, failure)
        except RuntimeError:  # the loop is closed: the worker has stopped
            pass

    def close(self) -> None:
        """Stop the generator without waiting: after the item in progress, if one is (a sync
        generator cannot be closed while it runs), in a stream thread; an async one is cancelled."""
        pending, self._pending = self._pending, None
        if isinstance(self._iterator, AsyncIterator):
            task = asyncio.ensure_future(_cancel_and_close(pending, self._iterator))
            _closing.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(_closing.discard)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if not running:
            if self._context is None:
                self._executor.submit(_close, self._iterator)
            else:
                self._executor.submit(self._context.copy().run, _close, self._iterator)


_closing: set[asyncio.Future[Any]] = set()


def _settle(future: asyncio.Future[Any], item: Any, failure: BaseException | None) -> None:
    if future.done():  # cancelled by a caller that stopped waiting
        return
    if failure is not None:
        future.set_exception(failure)
    else:
        future.set_result(item)


def stream_failure(exc: Exception) -> ServiceError:
    """A model exception raised while streaming, logged with its traceback, as a ModelError."""
    return model_failure(exc, "while streaming", "the model's stream raised an exception")


def _next(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return DONE
    except ServiceError:
        raise
    except Exception as exc:
        raise stream_failure(exc) from None


async def _anext(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return DONE
    except ServiceError:
        raise
    except Exception as exc:
        raise stream_failure(exc) from None


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("the model's stream raised an exception while closing")


async def _cancel_and_close(pending: asyncio.Future[Any] | None, iterator: AsyncIterator[Any]) -> None:
    """Cancel the item in progress, wait for the generator to leave it, then close it."""
    if pending is not None:
        pending.cancel()
        await asyncio.wait((pending,))
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("the model's stream raised an exception while closing")


@dataclass
class StreamOutcome:
    """How a stream ended, for the access log."""

    events: int = 0
    error: ServiceError | None = None  # ended with an error event
    client_gone: bool = False


class Deadlines:
    """The limits a stream (or a WebSocket answer) runs under: per event, the whole stream, and the
    drain window once the worker's stop begins, even while an event is awaited."""

    def __init__(self, per_event: float, whole: float, drain: Drain) -> None:
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time
        self.per_event = per_event
        self.whole_deadline = self._time() + whole
        self.whole = whole
        self._drain = drain

    def _limit(self, waiting_since: float) -> tuple[float, str]:
        """Seconds left to wait, and which limit passes when they do."""
        now = self._time()
        wait, limit = waiting_since + self.per_event - now, PER_EVENT
        if self.whole_deadline - now < wait:
            wait, limit = self.whole_deadline - now, WHOLE_STREAM
        drain = self._drain.deadline
        if drain is not None and drain - now < wait:
            wait, limit = drain - now, DRAIN
        return wait, limit

    def _error(self, limit: str) -> ServiceError:
        if limit == PER_EVENT:
            return StreamTimeout(f"no event within {self.per_event:g} s (MASERVE_REQUEST_TIMEOUT_SECONDS)",
                                 limit=PER_EVENT)
        if limit == WHOLE_STREAM:
            return StreamTimeout(f"the stream ran past {self.whole:g} s (MASERVE_STREAM_TIMEOUT_SECONDS)",
                                 limit=WHOLE_STREAM)
        return ServiceStopping("the service is stopping: the stream ran past the drain window")

    async def wait(self, future: asyncio.Future[Any], disconnected: asyncio.Future[Any]) -> Any:
        """`future`'s result, or ClientDisconnected, or the ServiceError of the limit that passed first.

        Paid once per event: one waiter future woken by plain callbacks (the item, the client
        leaving, the drain starting, a timer), not asyncio.wait and a task per call."""
        since = self._time()
        while True:
            if future.done():
                return future.result()  # raises the model's failure
            if disconnected.done():
                raise ClientDisconnected()
            wait, limit = self._limit(since)
            if wait <= 0:
                raise self._error(limit)
            waiter = self._loop.create_future()

            def wake(_: Any = None, waiter: asyncio.Future[Any] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            future.add_done_callback(wake)
            disconnected.add_done_callback(wake)
            timer = self._loop.call_later(wait, wake)
            watching_drain = self._drain.deadline is None  # the drain shortens the limit: wake up
            if watching_drain:
                self._drain.watch(wake)
            try:
                await waiter
            finally:
                timer.cancel()
                future.remove_done_callback(wake)
                disconnected.remove_done_callback(wake)
                if watching_drain:
                    self._drain.unwatch(wake)


async def first_item(source: EventSource, deadlines: Deadlines, disconnected: asyncio.Future[Any]) -> Any:
    """The first item, before any header is sent: its failures are plain JSON error replies."""
    try:
        return await await_item(source, deadlines, disconnected)
    except StreamTimeout as exc:
        if exc.limit == PER_EVENT:
            raise StreamTimeout(f"no first event within {deadlines.per_event:g} s "
                                "(MASERVE_REQUEST_TIMEOUT_SECONDS)", limit=PER_EVENT) from None
        raise


async def await_item(source: EventSource, deadlines: Deadlines, disconnected: asyncio.Future[Any]) -> Any:
    """The next item, or ClientDisconnected, or the ServiceError of the limit that passed first."""
    return await deadlines.wait(source.next_item(), disconnected)


class ClientDisconnected(Exception):
    """The client went away mid-stream."""


async def send_events(
    source: EventSource,
    first: Any,
    deadlines: Deadlines,
    disconnected: asyncio.Future[Any],
    send: Callable[[bytes], Awaitable[None]],
) -> StreamOutcome:
    """Send `first`, then every next item as it comes, until the iterator ends or a limit is hit.
    The generator is closed on every way out but its own end."""
    outcome = StreamOutcome()
    item = first
    try:
        while item is not DONE:
            await send(encode_event(item))
            outcome.events += 1
            item = await await_item(source, deadlines, disconnected)
    except ClientDisconnected:
        outcome.client_gone = True
        source.close()
    except ServiceError as exc:
        outcome.error = exc
        source.close()
        if not disconnected.done():
            await send(error_event(exc))
    return outcome
