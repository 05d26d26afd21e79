"""WebSocket apis: an api declared with `"protocol": "ws"` (or `"wss"`) is served over WebSocket at its url.

The contract for the model: each message in is decoded like a request to that api (a binary
message is the file of an api that takes one file; a text message is the JSON object of a JSON
api) and handed to `predict`; its answer goes back as one message (text JSON, a str as text, bytes
as binary), or, when it is an iterator, as one message per item (a chat model's tokens). Messages
on one socket are answered in order, one at a time. A model that wants per-connection state
defines `websocket_session()`: called once per socket, it returns an object whose `predict(inputs)`
answers that socket's messages (and whose `close()`, if any, runs when the socket closes).

A message that fails gets an error message (`{"error_code", "error_msg"}`) and the socket stays
open. Limits: MASERVE_MAX_BODY_BYTES per message (close code 1009, by the protocol layer),
MASERVE_KEEPALIVE_SECONDS without a message (close 1000), MASERVE_REQUEST_TIMEOUT_SECONDS to an
answer's first message and between its messages. On stop, sockets keep working through the grace
period; at the drain an idle socket is closed at once and a busy one when its message is answered
(or at the end of the drain window), with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from uvicorn.protocols.utils import ClientDisconnected

from maserve.decode import decode_message
from maserve.errors import InferenceTimeout, ModelNotReady, NotFound, ServiceError, ServiceStopping
from maserve.http.calls import Route, call_model
from maserve.logs import TRACE_ID, trace_id_of
from maserve.jsonout import to_json  # strict: NaN or Infinity is an error message, not invalid JSON
from maserve.sse import DONE, Deadlines, EventSource, StreamTimeout, await_item, is_stream

if TYPE_CHECKING:
    from maserve.app import MaserveApp

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WS_PROTOCOLS = ("ws", "wss")
GOING_AWAY = 1001  # RFC 6455: the server is going down
NORMAL = 1000


def outgoing(item: Any) -> Message:
    """One answer (or streamed item) as a message: bytes binary, str text, anything else JSON text."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return {"type": "websocket.send", "bytes": bytes(item)}
    if isinstance(item, str):
        return {"type": "websocket.send", "text": item}
    return {"type": "websocket.send", "text": to_json(item)}


def error_message(error: ServiceError) -> Message:
    return {"type": "websocket.send", "text": error.body().decode()}


async def reject(send: Send, error: ServiceError) -> None:
    """Refuse the upgrade with a plain HTTP JSON error (ASGI's websocket.http.response extension)."""
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


class Connection:
    """One accepted socket: its message loop and how it ended, for the access log."""

    def __init__(self, app: MaserveApp, route: Route, receive: Receive, send: Send) -> None:
        self.app = app
        self.route = route
        self._receive = receive
        self._send = send
        self._pending_receive: asyncio.Future[Message] | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.errors = 0
        self.close_code: int | None = None
        self.close_reason = ""
        # Never done: a disconnect mid-answer surfaces as a failed send instead.
        self._never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        model = self.app.model
        assert model is not None
        open_session = getattr(model, "websocket_session", None)
        session = open_session() if callable(open_session) else None
        predict = session.predict if session is not None else model.predict
        drain = self.app.drain.event()
        try:
            while True:
                message = await self._next_message(drain)
                if message is None:
                    break
                self.messages_in += 1
                data = message.get("bytes")
                await self._answer(predict, data if data is not None else message.get("text", ""))
                if self.app.drain.deadline is not None:
                    await self._close(GOING_AWAY, "the service is stopping")
                    break
        except ClientDisconnected:
            self.close_code = self.close_code or 1006
        finally:
            if self._pending_receive is not None:
                self._pending_receive.cancel()
            close = getattr(session, "close", None)
            if callable(close):
                await asyncio.get_running_loop().run_in_executor(self.app.stream_executor(), close)

    async def _next_message(self, drain: asyncio.Event) -> Message | None:
        """The next message, or None once the socket is closed (by the client, idle time or the drain)."""
        if drain.is_set():
            await self._close(GOING_AWAY, "the service is stopping")
            return None
        if self._pending_receive is None:
            self._pending_receive = asyncio.ensure_future(self._receive())
        drained = asyncio.ensure_future(drain.wait())
        idle = self.app.settings.keepalive_seconds
        try:
            done, _ = await asyncio.wait((self._pending_receive, drained), timeout=idle,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
        if self._pending_receive in done:
            message, self._pending_receive = self._pending_receive.result(), None
            if message["type"] == "websocket.disconnect":
                self.close_code = message.get("code", 1005)
                self.close_reason = message.get("reason") or ""
                return None
            return message
        if drained in done:
            await self._close(GOING_AWAY, "the service is stopping")
        else:
            await self._close(NORMAL, f"idle for {idle} s (MASERVE_KEEPALIVE_SECONDS)")
        return None

    async def _answer(self, predict: Callable[[Any], Any], data: bytes | str) -> None:
        """Answer one message: its result, its items, or an error message (the socket stays open)."""
        loop = asyncio.get_running_loop()
        settings = self.app.settings
        deadlines = Deadlines(settings.request_timeout_seconds, settings.stream_timeout_seconds,
                              self.app.drain)
        try:
            inputs = decode_message(self.route.api, data, self.route.request)
            context = contextvars.copy_context() if TRACE_ID.get() is not None else None
            if context is None:
                call = loop.run_in_executor(self.app.executor, call_model, predict, inputs)
            else:  # the model's log lines carry the socket's trace id
                call = loop.run_in_executor(self.app.executor, context.run, call_model, predict, inputs)
            try:
                result = await deadlines.wait(call, self._never)
            except StreamTimeout:
                raise InferenceTimeout(f"no answer within {settings.request_timeout_seconds:g} s "
                                       "(MASERVE_REQUEST_TIMEOUT_SECONDS)") from None
            if not is_stream(result):
                await self._send_out(outgoing(result))
                return
            await self._stream(EventSource(result, self.app.stream_executor(), context), deadlines)
        except ServiceStopping:  # the drain window ended mid-answer
            self.errors += 1
            await self._close(GOING_AWAY, "the service is stopping")
            raise ClientDisconnected() from None
        except ServiceError as exc:
            self.errors += 1
            await self._send_out(error_message(exc))

    async def _stream(self, source: EventSource, deadlines: Deadlines) -> None:
        try:
            item = await await_item(source, deadlines, self._never)
            while item is not DONE:
                await self._send_out(outgoing(item))
                item = await await_item(source, deadlines, self._never)
        except (ServiceError, ClientDisconnected):
            source.close()
            raise

    async def _send_out(self, message: Message) -> None:
        await self._send(message)
        self.messages_out += 1

    async def _close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except ClientDisconnected:
            pass


async def serve_websocket(app: MaserveApp, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """One WebSocket from its upgrade to its close, with one access line at the end."""
    started = time.perf_counter()
    path: str = scope["path"]
    request_id = app.request_id(scope)
    trace_id = next((trace_id_of(value) for name, value in scope["headers"] if name == b"traceparent"), None)
    if trace_id is not None:
        TRACE_ID.set(trace_id)  # this socket's task (its access line); its messages' model calls get a copy
    if (await receive())["type"] != "websocket.connect":
        return
    route = app.websocket_route(path)
    error: ServiceError | None = None
    if route is None:
        error = NotFound(f"no WebSocket api at {path}; WebSocket apis: {', '.join(app.websocket_urls()) or 'none'}")
    elif not await app.wait_ready():
        error = ModelNotReady("the model is still loading; retry shortly")
    if error is not None or route is None:
        assert error is not None
        await reject(send, error)
        app.log_request(request_id, "GET", path, error.status, started, 0, error)
        return
    await send({"type": "websocket.accept", "headers": [(b"x-request-id", request_id)]})
    connection = Connection(app, route, receive, send)
    await connection.run()
    app.log_request(request_id, "GET", path, 101, started, 0, None, messages_in=connection.messages_in,
                    messages_out=connection.messages_out, message_errors=connection.errors,
                    close_code=connection.close_code, close_reason=connection.close_reason)
