"""The benches that measure maserve's request path against less: bench/path.py drives the real
protocol, short lane and batcher in one process (its rounds must all be answered 200 with the
model's result, and the server must cost more than the model alone, which it runs too);
bench/floor_lane.py serves the model through maserve's batcher on a bare protocol."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import free_port

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO / "examples" / "mnist"


def test_the_in_process_request_path_bench_serves_every_round_and_reports_its_overhead():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "path.py"), "--connections", "4", "--seconds", "0.5"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"4 connections: (\d+) requests, batch ([\d.]+), server ([\d.]+) CPU us/req, "
                      r"pipeline ([\d.]+) us/image, overhead (-?[\d.]+) us \(([\d.]+)x\)", done.stdout)
    assert found, done.stdout
    requests, batch, server, pipeline = int(found[1]), float(found[2]), float(found[3]), float(found[4])
    assert requests >= 4 and requests % 4 == 0  # whole rounds, every connection answered in each
    assert 1 <= batch <= 4  # the lane's batches: at most the requests of one round
    assert server > pipeline > 0


def test_the_lane_floor_serves_the_model_with_maserve_headers_and_access_lines(tmp_path):
    """bench/floor_lane.py (maserve's model path on a bare protocol) must answer what maserve
    answers, or the bench compares maserve with a server doing less."""
    port = free_port()
    out = tmp_path / "floor.out"
    with out.open("wb") as sink:
        floor = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor_lane.py"), "--port", str(port),
                                  "--workers", "1", "--model-dir", str(MNIST_DIR)], stdout=sink, stderr=subprocess.STDOUT,
                                 cwd=REPO)
    try:
        for _ in range(300):  # up to 30 s for the model to load
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as health:
                    assert json.loads(health.read()) == {"health": "true"}
                break
            except OSError:
                time.sleep(0.1)
        done = subprocess.run(["curl", "-s", "-i", "-H", "X-Request-Id: floor-1", f"http://127.0.0.1:{port}/",
                               "-F", f"images=@{MNIST_DIR / 'samples' / 'digit_7.png'}"],
                              capture_output=True, timeout=30, check=True)
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"x-request-id: floor-1" in head
        assert json.loads(body) == {"mnist_result": 7}
        refused = subprocess.run(["curl", "-s", "-H", "Content-Type: text/plain", "-d", "x", f"http://127.0.0.1:{port}/"],
                                 capture_output=True, timeout=30, check=True)
        assert json.loads(refused.stdout)["error_code"] == "MASERVE.UNSUPPORTED_MEDIA_TYPE"
    finally:
        floor.terminate()
        floor.wait(timeout=30)
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "maserve.access"]
    assert [(line["request_id"], line["status"]) for line in access][:1] == [("floor-1", 200)]
    assert [line["status"] for line in access] == [200, 415]
