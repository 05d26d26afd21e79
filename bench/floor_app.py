"""The floor under any Python server on maserve's stack: the MNIST answer without the model.

Two servers that read the request (headers and the whole multipart body) and answer the canned
`{"mnist_result": 7}` that the bench's digit deserves, with no decode, no model and no log:

- `floor-asgi`: this module's `app`, a bare ASGI callable on uvicorn's gunicorn worker (uvloop +
  httptools): what uvicorn's protocol, its request cycle and an asyncio task per request cost;
- `floor-raw`: `python bench/floor_app.py --port P --workers N`, a bare asyncio protocol on uvloop
  with httptools' parser and a prebuilt reply, forked workers sharing one socket: what the loop,
  the system calls and the HTTP parse cost, the least a Python server on this stack pays.

The difference between maserve's CPU per request and these, and the in-process pipeline's, says
where a request's time goes (bench/RESULTS.md, "Where a small model's request goes").
FLOOR_WORK_US=N makes each answer cost N us of CPU first (a spin on the event loop, as a small
model's batch runs there): the floor at a model's cost, where the server and not the client is
the bottleneck, so that each reply has to wake a waiting client as maserve's do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

ANSWER = b'{"mnist_result": 7}'
HEALTH = b'{"health": "true"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
WORK_SECONDS = float(os.environ.get("FLOOR_WORK_US", "0")) / 1e6
_HEALTH_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(HEALTH)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """floor-asgi: read the body, answer the canned result (GET /health: healthy)."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    health = scope["path"] == "/health"
    if not health:
        _work()
    await send({"type": "http.response.start", "status": 200, "headers": _HEALTH_HEADERS if health else _HEADERS})
    await send({"type": "http.response.body", "body": HEALTH if health else ANSWER})


def _work() -> None:
    """FLOOR_WORK_US of CPU, a stand-in for the model's (perf_counter: no system call to read)."""
    if WORK_SECONDS:
        end = time.perf_counter() + WORK_SECONDS
        while time.perf_counter() < end:
            pass


def _reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


class _RawProtocol(asyncio.Protocol):
    """floor-raw: one connection; httptools parses, a prebuilt reply goes out per request."""

    _REPLIES = {b"/health": _reply(HEALTH)}
    _DEFAULT = _reply(ANSWER)

    def connection_made(self, transport: Any) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # noqa: BLE001 - a floor, not a server: drop what it cannot parse
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        if self.url != b"/health":
            _work()
        self.transport.write(self._REPLIES.get(self.url, self._DEFAULT))
        if not self.parser.should_keep_alive():
            self.transport.close()


def _serve(sock: socket.socket) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_RawProtocol, sock=sock)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def serve_forked(host: str, port: int, workers: int, serve: Callable[[socket.socket], None]) -> int:
    """`workers` forked processes running `serve` on one shared listening socket; SIGTERM stops them."""
    sock = socket.create_server((host, port), backlog=2048)
    sock.setblocking(False)
    children = []
    for _ in range(max(1, workers)):
        pid = os.fork()
        if pid == 0:
            serve(sock)
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(pid, signal.SIGTERM) for pid in children])
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="floor-raw: the canned MNIST answer on uvloop + httptools")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    return serve_forked(args.host, args.port, args.workers, _serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
