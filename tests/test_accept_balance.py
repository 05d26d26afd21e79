"""Connections opened at once are shared by the workers (maserve.http.accept): without it the
worker that wakes first accepted every waiting connection (8/0 in a benchmark round, half the
cores idle for a compute-bound model). A real server with 2 workers, 16 connections opened
together, each sending a request and keeping its connection; the split is read from /proc."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from helpers import ECHO_DIR, start_server


def established_per_worker(pids: set[int], port: int) -> list[int]:
    """Established connections on `port` held by each pid (the server's ends), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    counts = []
    for pid in sorted(pids):
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts.append(held)
    return counts


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
            split = established_per_worker(pids, server.port)
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
