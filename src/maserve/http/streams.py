"""An SSE answer over plain HTTP (maserve.sse makes the events): wait for the stream's first item,
while a failure can still be a JSON error reply, then send the events and log how the stream ended.
Split from maserve.app, which decides that a request streams; this module only sends it."""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from maserve.logs import TRACE_ID
from maserve.sse import STREAM_HEADERS, Deadlines, EventSource, first_item, send_events

if TYPE_CHECKING:
    from maserve.app import MaserveApp

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLOSE_HEADER = (b"connection", b"close")


@dataclass
class PendingStream:
    """A stream whose first item arrived: what `send_stream` needs to send it."""

    source: EventSource
    first: Any
    deadlines: Deadlines
    disconnected: asyncio.Future[Any]


async def open_stream(app: MaserveApp, iterator: Any, receive: Receive) -> PendingStream:
    """Wait for a stream's first item: until it comes, a failure is a plain JSON error reply."""
    source = EventSource(iterator, app.stream_executor(),
                         contextvars.copy_context() if TRACE_ID.get() is not None else None)
    deadlines = Deadlines(app.settings.request_timeout_seconds, app.settings.stream_timeout_seconds, app.drain)
    disconnected = asyncio.ensure_future(_disconnect(receive))
    try:
        first = await first_item(source, deadlines, disconnected)
    except BaseException:
        disconnected.cancel()
        source.close()
        raise
    return PendingStream(source, first, deadlines, disconnected)


async def send_stream(
    app: MaserveApp,
    pending: PendingStream,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    request_id: bytes,
    method: str,
    path: str,
    started: float,
) -> None:
    """Send a stream's events (maserve.sse) after its first item arrived; log how it ended."""
    headers = [*STREAM_HEADERS, *headers[1:]]  # the event-stream type instead of JSON's
    if app.stopping.is_set():
        headers.append(CLOSE_HEADER)
    sent = 0

    async def send_chunk(chunk: bytes) -> None:
        nonlocal sent
        sent += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    metrics = app.metrics
    if metrics is not None:
        metrics.first_event.labels(path).observe(time.perf_counter() - started)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        outcome = await send_events(pending.source, pending.first, pending.deadlines, pending.disconnected,
                                    send_chunk)
        if not outcome.client_gone:
            await send({"type": "http.response.body", "body": b""})
    except BaseException:
        pending.source.close()
        raise
    finally:
        pending.disconnected.cancel()
    status = 499 if outcome.client_gone else 200
    if metrics is not None:
        kind = "client_gone" if outcome.client_gone else "error" if outcome.error is not None else "ok"
        metrics.streams.labels(path, kind).inc()
    app.log_request(request_id, method, path, status, started, sent, outcome.error, events=outcome.events)


async def _disconnect(receive: Receive) -> None:
    """Returns when the client has gone (the request body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass
