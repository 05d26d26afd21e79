"""Reading a request body: never held whole past the limit."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from maserve.errors import PayloadTooLarge

# Set in a request's scope["state"] by maserve.http.protocol when its body did not arrive in time
# (or stalled while the worker was at its in-flight cap): the protocol answered 408 with this
# message and closed; the app logs the request so.
BODY_TIMEOUT_STATE = "maserve.body_timeout"

Receive = Callable[[], Awaitable[dict[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read the body, stopping (413) as soon as it passes `limit`: an oversized body is never held whole."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
