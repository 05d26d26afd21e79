"""The access log, written once per event-loop iteration: still one JSON line per request, none lost
when the server stops right after answering."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import ECHO_DIR, Server, echo_request, start_server

CONNECTIONS = 8
PER_CONNECTION = 25


def _send(server: Server, worker: int) -> list[str]:
    conn = server.connect()
    try:
        ids = [f"logline-{worker}-{i}" for i in range(PER_CONNECTION)]
        for request_id in ids:
            assert echo_request(conn, 10, headers={"X-Request-Id": request_id}).status == 200
        return ids
    finally:
        conn.close()


def test_every_request_has_one_line_after_a_stop(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_LOG_FORMAT": "json"})
    try:
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            sent = [i for ids in pool.map(lambda w: _send(server, w), range(CONNECTIONS)) for i in ids]
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()
    lines = [r for r in server.log_records() if str(r.get("request_id", "")).startswith("logline-")]
    assert sorted(r["request_id"] for r in lines) == sorted(sent)
    assert all(r["message"] == "request" and r["status"] == 200 and r["path"] == "/echo" for r in lines)
