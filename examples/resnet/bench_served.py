"""Served throughput of examples/resnet under wrk (bench/multipart.lua), with maserve's batch sizes.

    python examples/resnet/bench_served.py [--connections 1,8,64] [--seconds 15] [--workers 2] [--port 18090]

Starts `maserve serve examples/resnet`, waits for /health, runs wrk at each connection count
(sending samples/sample.jpg), reads maserve_batch_size from /metrics after each run (the
difference is that run's batches), prints a Markdown table and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LUA = REPO / "bench" / "multipart.lua"


def scrape(base: str) -> tuple[float, float]:
    """(sum, count) of maserve_batch_size across the workers."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    total = float(
        re.search(
            r"^maserve_batch_size_sum(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE
        ).group(1)
    )
    count = float(
        re.search(
            r"^maserve_batch_size_count(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE
        ).group(1)
    )
    return total, count


def wrk(url: str, connections: int, seconds: int, image: Path) -> dict:
    cmd = [
        "wrk",
        f"-t{min(connections, 2)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        url,
        "--",
        str(image),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
    return json.loads(line[len("WRK_JSON ") :])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=18090)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    env = dict(os.environ, MASERVE_LOG_FORMAT="text")
    server = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "maserve"),
            "serve",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            "--workers",
            str(args.workers),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("server not healthy after 60 s")
        image = HERE / "samples" / "sample.jpg"
        wrk(base + "/", 2, 3, image)  # warm-up
        print(
            "| connections | images/s | p50 ms | p90 ms | p99 ms | errors | mean batch | batches |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for connections in map(int, args.connections.split(",")):
            s0, c0 = scrape(base)
            r = wrk(base + "/", connections, args.seconds, image)
            s1, c1 = scrape(base)
            errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            mean_batch = (s1 - s0) / (c1 - c0) if c1 > c0 else 0.0
            print(
                f"| {connections} | {r['requests'] / (r['duration_us'] / 1e6):.1f} | {r['p50_us'] / 1000:.0f} | "
                f"{r['p90_us'] / 1000:.0f} | {r['p99_us'] / 1000:.0f} | {errors} | {mean_batch:.1f} | {int(c1 - c0)} |",
                flush=True,
            )
    finally:
        os.killpg(server.pid, signal.SIGINT)
        os.killpg(server.pid, signal.SIGINT)  # a second SIGINT skips the grace period
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
