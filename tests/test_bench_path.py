"""bench/path.py drives the real protocol, short lane and batcher in one process: its rounds must
all be answered 200 with the model's result, and its figures must say the server costs more than
the model alone (the server runs the model too)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
