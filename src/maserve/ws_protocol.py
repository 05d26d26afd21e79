"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), adapted to the platform.

Three changes. Messages over 64 KB go out in frames of at most 64 KB, as the platform's gateway
splits them (incoming fragmented messages are joined by the protocol already). And a stop does not
cut open sockets with 1012: uvicorn's shutdown closes every socket at once, where maserve's app
closes each one itself with 1001 once its message in progress is answered (maserve.websocket).
And a client that reads nothing of its answers for MASERVE_SEND_TIMEOUT_SECONDS is cut off, as
over HTTP (maserve.http.protocol): uvicorn's send waits for the socket to drain, and a peer that
never reads would hold its socket, its buffered answers and its message loop forever (close()
itself waits for the buffer to flush), so the connection is aborted instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# The platform's frame size for WebSocket messages.
MAX_FRAME_BYTES = 64 * 1024


class PlatformWebSocketProtocol(WebSocketsSansIOProtocol):
    send_timeout: float | None = None  # set by the worker (maserve.server): MASERVE_SEND_TIMEOUT_SECONDS

    def shutdown(self) -> None:
        if not self.handshake_complete or self.close_sent:
            super().shutdown()  # nothing accepted yet, or already closing: uvicorn's way
        # else the app closes the socket (1001) within the drain window; gunicorn's hard stop bounds it

    async def send(self, message: Any) -> None:
        if not self.writable.is_set() and self.send_timeout:
            try:
                await asyncio.wait_for(self.writable.wait(), self.send_timeout)
            except TimeoutError:
                self.transport.abort()  # drops what is buffered; connection_lost follows
                raise ClientDisconnected() from None
        if message["type"] != "websocket.send" or not self.handshake_complete or self.close_sent:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
                self.handshake_complete = True  # refused with a reply: uvicorn would log it as a failed handshake
            return
        data = message.get("bytes")
        binary = data is not None
        if data is None:
            data = (message.get("text") or "").encode()
        if len(data) <= MAX_FRAME_BYTES:
            await super().send(message)
            return
        await self.writable.wait()  # already set unless there is no send timeout
        if self.disconnected:
            raise ClientDisconnected()
        view = memoryview(data)
        first = bytes(view[:MAX_FRAME_BYTES])
        if binary:
            self.conn.send_binary(first, fin=False)
        else:
            self.conn.send_text(first, fin=False)
        for start in range(MAX_FRAME_BYTES, len(data), MAX_FRAME_BYTES):
            end = start + MAX_FRAME_BYTES
            self.conn.send_continuation(bytes(view[start:end]), fin=end >= len(data))
        self.transport.write(b"".join(self.conn.data_to_send()))
