#!/usr/bin/env python3
"""bench/ request path: what maserve's own Python costs a request, with no sockets and no client.

One worker's app, protocol and short lane, set up as a worker sets them up, on a uvloop loop in
this process. N connections (protocols on in-memory transports) each receive one whole MNIST
multipart request per round, all in one loop iteration, as N keep-alive clients of a busy server
do; the loop then runs until every answer is written. CPU time per request is this process's
(user + system, every thread). The same run measures the model's own pipeline (`prepare` per
request, one `predict_batch` per batch of the size the server formed) so that the ratio
server/pipeline leaves out the kernel, the client and the other worker: it is the overhead that
maserve's Python adds, the part a change to the request path can move. A profile of the run
(`--profile FILE`, cProfile) says where it goes.

    .venv/bin/python bench/path.py --connections 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class Answered:
    """Counts the answers written in a round; `done` resolves at the last one."""

    def __init__(self) -> None:
        self.waiting = 0
        self.done: asyncio.Future[None] | None = None

    def expect(self, count: int) -> asyncio.Future[None]:
        self.waiting = count
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def one(self) -> None:
        self.waiting -= 1
        if self.waiting == 0 and self.done is not None:
            self.done.set_result(None)


class MemoryTransport(asyncio.Transport):
    """A connection's transport that keeps what is written (the answers) and counts them."""

    def __init__(self, answered: "Answered") -> None:
        super().__init__()
        self.answered = answered
        self.closed = False
        self.last = b""

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.last = data
        self.answered.one()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request_bytes(image: Path, url: str = "/") -> bytes:
    """One keep-alive multipart POST of `image` as the `images` field, as curl -F sends it."""
    boundary = b"------------------------maservebenchpath"
    body = (b"--" + boundary + b"\r\ncontent-disposition: form-data; name=\"images\"; filename=\"" +
            image.name.encode() + b"\"\r\ncontent-type: image/png\r\n\r\n" + image.read_bytes() +
            b"\r\n--" + boundary + b"--\r\n")
    head = (b"POST " + url.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nuser-agent: bench\r\naccept: */*\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\ncontent-type: multipart/form-data; boundary=" +
            boundary + b"\r\n\r\n")
    return head + body


async def _serve(model_dir: Path, image: Path, connections: int, seconds: float, profile: Path | None) -> dict[str, float]:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from maserve.app import build_app
    from maserve.config import load_config
    from maserve.http.fastlane import FastLane
    from maserve.http.limits import Guard, Limits
    from maserve.http.protocol import MaserveHttpProtocol
    from maserve.settings import Settings

    os.environ["MASERVE_MODEL_DIR"] = str(model_dir)
    settings = Settings.load()
    config = load_config(model_dir / "config.json")
    app = build_app(settings, config)
    startup: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})

    async def receive() -> dict[str, str]:
        return await startup.get()

    async def send(message: dict[str, str]) -> None:
        pass

    lifespan = asyncio.ensure_future(app({"type": "lifespan"}, receive, send))
    for _ in range(600):
        if app.ready():
            break
        await asyncio.sleep(0.05)
    else:
        raise SystemExit("the model did not load within 30 s")
    uv = Config(app, http=MaserveHttpProtocol, lifespan="off", access_log=False, server_header=False,
                proxy_headers=False, timeout_keep_alive=200)
    uv.load()
    MaserveHttpProtocol.guard = Guard(Limits.derive(settings), config.health_url)
    MaserveHttpProtocol.fast_lane = FastLane(app)
    state = ServerState()
    protocols, transports = [], []
    answered = Answered()
    for _ in range(connections):
        protocol = MaserveHttpProtocol(config=uv, server_state=state, app_state={})
        transport = MemoryTransport(answered)
        protocol.connection_made(transport)
        protocols.append(protocol)
        transports.append(transport)
    data = request_bytes(image, config.apis[0].url)
    sizes: list[int] = []
    if app.batcher is not None:
        app.batcher.on_batch = sizes.append

    async def one_round() -> None:
        done = answered.expect(connections)
        for protocol in protocols:
            protocol.data_received(data)
        await done  # bounded by the watchdog below: no task per round to measure

    loop = asyncio.get_running_loop()

    def stalled() -> None:
        if answered.done is not None and not answered.done.done():
            answered.done.set_exception(SystemExit(f"{answered.waiting} answers did not arrive within 30 s"))

    for _ in range(20):
        watchdog = loop.call_later(30, stalled)
        await one_round()
        watchdog.cancel()
    if b" 200 OK" not in transports[0].last or b"mnist_result" not in transports[0].last:
        raise SystemExit(f"unexpected answer: {transports[0].last[:300]!r}")
    sizes.clear()
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    cpu0, t0, rounds = time.process_time(), time.perf_counter(), 0
    watchdog = loop.call_later(seconds + 30, stalled)
    while time.perf_counter() - t0 < seconds and rounds < 1_000_000:
        await one_round()
        rounds += 1
    watchdog.cancel()
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    requests = rounds * connections
    batch = sum(sizes) / len(sizes) if sizes else 1.0
    pipeline = _pipeline_us(app, image, max(1, round(batch)), seconds)
    await startup.put({"type": "lifespan.shutdown"})
    await lifespan
    return {"requests": requests, "server_us": cpu / requests * 1e6, "batch": batch, "pipeline_us": pipeline}


def _pipeline_us(app: Any, image: Path, batch: int, seconds: float) -> float:
    """CPU us per image of the model alone: `prepare` each, one `predict_batch` (or `predict`)."""
    from maserve.model import Inputs, UploadedFile, serves_batches

    model = app.model
    inputs = Inputs(files={"images": UploadedFile(image.name, "image/png", image.read_bytes())})
    batches = serves_batches(model)
    cpu0, t0, images = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds and images < 10_000_000:
        if batches:
            model.predict_batch([model.prepare(inputs) for _ in range(batch)])
        else:
            for _ in range(batch):
                model.predict(inputs)
        images += batch
    return (time.process_time() - cpu0) / images * 1e6


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "examples" / "mnist")
    p.add_argument("--image", type=Path, default=REPO / "examples" / "mnist" / "samples" / "digit_7.png")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile of the measured rounds here")
    args = p.parse_args(argv)
    if not (1 <= args.connections <= 1000 and 0.5 <= args.seconds <= 120):
        p.error("--connections 1..1000, --seconds 0.5..120")
    import logging.config

    import uvloop

    from maserve.logs import logging_config

    sys.stdout = io.TextIOWrapper(open(os.devnull, "wb"), write_through=False)  # the access log's writes, not the terminal
    logging.config.dictConfig(logging_config("json"))
    result = uvloop.run(_serve(args.model, args.image, args.connections, args.seconds, args.profile))
    sys.stdout = sys.__stdout__
    ratio = result["server_us"] / result["pipeline_us"]
    print(f"{args.connections} connections: {result['requests']:.0f} requests, batch {result['batch']:.1f}, "
          f"server {result['server_us']:.1f} CPU us/req, pipeline {result['pipeline_us']:.1f} us/image, "
          f"overhead {result['server_us'] - result['pipeline_us']:.1f} us ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
