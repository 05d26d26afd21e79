#!/usr/bin/env python3
"""floor-lane: maserve's model path on a bare protocol, what a lane protocol of maserve's own could cost.

`python bench/floor_lane.py --port P --workers N --model-dir DIR`: forked workers share one socket,
each a uvloop + httptools protocol (as bench/floor_app.py's floor-raw) that serves the api of
DIR's config.json through maserve's own model path: its batcher (maserve.http.batcher: the same
opportunistic batches, inline on the loop for a quick model), decode, `prepare`/`predict_batch`
and encode, with maserve's headers (date, content-type, x-request-id, content-length) and its
JSON access line a request (maserve.logs.IterationLog, written once per loop iteration to
stdout; FLOOR_LANE_ACCESS_LOG=0 leaves it out). What it leaves out is what a server needs
besides: uvicorn's protocol and its ASGI way, the guard's caps and timeouts, the request
timeout's 504, metrics, the graceful stop, TLS and WebSocket. So maserve's CPU per request over
this floor's is what those cost, with the way maserve reaches its lane through uvicorn's protocol
(bench/RESULTS.md, "A lane on a bare protocol").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any

from floor_app import serve_forked  # noqa: E402  (bench/, this script's folder)
from maserve.decode import check_content_type
from maserve.errors import ServiceError
from maserve.http.batcher import Job

HEALTH = b'{"health": "true"}'


class _Worker:
    """One process's model, batcher, access log and date header."""

    def __init__(self, model_dir: Path) -> None:
        from maserve.config import load_config
        from maserve.http.batcher import Batcher
        from maserve.http.calls import Route
        from maserve.logs import ACCESS_LOGGER, IterationLog, logging_config
        from maserve.model import load_model
        from maserve.schema import RequestSchema

        logging.config.dictConfig(logging_config("json"))
        config = load_config(model_dir / "config.json")
        self.model = load_model(model_dir, config)
        self.model.load()
        self.model.warmup()
        api = config.apis[0]
        self.route = Route(api, RequestSchema(api), None)
        self.batcher = Batcher(self.model, ThreadPoolExecutor(2), 60.0)
        self.access = IterationLog(logging.getLogger(ACCESS_LOGGER))
        self.access_lines = os.environ.get("FLOOR_LANE_ACCESS_LOG", "1") != "0"  # 0: what the access line costs
        self.prefix = os.urandom(8).hex().encode()
        self.count = 0
        self._second = -1
        self._date = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date


class _Answer:
    """A request's answer slot for the batcher (done / set_result / set_exception)."""

    __slots__ = ("protocol", "request_id", "started", "keep_alive", "answered")

    def __init__(self, protocol: "_LaneProtocol", request_id: bytes, keep_alive: bool) -> None:
        self.protocol = protocol
        self.request_id = request_id
        self.started = time.perf_counter()
        self.keep_alive = keep_alive
        self.answered = False

    def done(self) -> bool:
        return self.answered

    def set_result(self, body: bytes) -> None:
        self._send(200, b"OK", body)

    def set_exception(self, exception: BaseException) -> None:
        error = exception if isinstance(exception, ServiceError) else ServiceError("internal server error")
        self._send(error.status, b"Error", error.body())

    def _send(self, status: int, reason: bytes, body: bytes) -> None:
        self.answered = True
        protocol = self.protocol
        worker = protocol.worker
        if not protocol.transport.is_closing():
            protocol.transport.write(b"".join((
                b"HTTP/1.1 %d %s\r\n" % (status, reason), worker.date(), b"content-type: application/json\r\n",
                b"x-request-id: ", self.request_id, b"\r\ncontent-length: %d\r\n" % len(body),
                b"" if self.keep_alive else b"connection: close\r\n", b"\r\n", body)))
            if not self.keep_alive:
                protocol.transport.close()
        if not worker.access_lines:
            return
        seconds = time.perf_counter() - self.started
        worker.access.log(logging.INFO, "request", {
            "request_id": self.request_id.decode(), "method": "POST", "path": worker.route.api.url, "status": status,
            "latency_ms": round(seconds * 1000, 3), "bytes": len(body)})


class _LaneProtocol(asyncio.Protocol):
    """One connection: headers, a whole body, then into the next batch."""

    worker: _Worker

    def connection_made(self, transport: Any) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # noqa: BLE001 - a floor, not a server: drop what it cannot parse
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.parts = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        worker = self.worker
        keep_alive = self.parser.should_keep_alive()
        if self.url == b"/health":
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(HEALTH), HEALTH))
            return
        content_type = request_id = b""
        for name, value in self.headers:
            if name == b"content-type":
                content_type = value
            elif name == b"x-request-id":
                request_id = value
        if not request_id:
            worker.count += 1
            request_id = b"%s-%08x" % (worker.prefix, worker.count)
        answer = _Answer(self, request_id, keep_alive)
        try:
            boundary = check_content_type(worker.route.api, content_type)
        except Exception as exc:  # noqa: BLE001 - answered as maserve would
            answer.set_exception(exc)
            return
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        worker.batcher.add(self.loop, Job(worker.route, body, boundary, answer))


def _serve(sock: socket.socket, model_dir: Path) -> None:
    import uvloop

    _LaneProtocol.worker = _Worker(model_dir)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_LaneProtocol, sock=sock)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()
        _LaneProtocol.worker.access.flush()

    uvloop.run(main())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model-dir", type=Path, required=True)
    args = p.parse_args(argv)
    model_dir = args.model_dir.resolve()
    return serve_forked(args.host, args.port, args.workers, lambda sock: _serve(sock, model_dir))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
