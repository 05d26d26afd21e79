"""Connections opened at once are shared by the workers (maserve.http.accept): without it the
worker that wakes first accepted every waiting connection (8/0 in a benchmark round, half the
cores idle for a compute-bound model). A real server with 2 workers, 16 connections opened
together, each sending a request and keeping its connection; the split is read from /proc."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from helpers import ECHO_DIR, ROOT, start_server

sys.path.insert(0, str(ROOT / "bench"))
from load import connections_per_pid  # noqa: E402  (the benchmark's /proc count of the split)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc")
def test_connections_opened_at_once_are_shared_by_the_workers(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_WORKERS": "2"})
    socks: list[socket.socket] = []
    try:
        pids = server.worker_pids()
        assert len(pids) == 2
        for round_ in range(3):
            socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(16)]
            for sock in socks:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in socks:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            split = connections_per_pid(sorted(pids), server.port)
            assert sum(split) == 16, split
            assert min(split) >= 6, f"round {round_}: the workers hold {split} of 16 connections"
            for sock in socks:
                sock.close()
            socks = []
            time.sleep(0.3)  # both workers see the connections go
    finally:
        for sock in socks:
            sock.close()
        server.stop()
