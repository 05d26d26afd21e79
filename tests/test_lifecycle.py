"""The server's life with real processes: loading, worker loss, load failure, master death, logs, defaults."""

from __future__ import annotations

import http.client
import json
import re
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from helpers import ECHO_DIR, Reply, Server, echo_request, start_server


def _wait_port_answers(server: Server, timeout: float = 20) -> Reply:
    """Poll /health (bounded) until the port answers at all; return that first answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"server exited with {server.proc.returncode}\n{server.logs()}"
        try:
            return server.get("/health")
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise AssertionError(f"the port never answered\n{server.logs()}")


def test_health_is_503_while_loading_and_predict_waits(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"ECHO_LOAD_SECONDS": "3"}, wait=False)
    try:
        first = _wait_port_answers(server)
        assert first.status == 503, (first.status, first.body)
        assert first.json() == {"health": "false"}

        result: dict[str, object] = {}

        def predict() -> None:
            conn = server.connect(timeout=30)
            started = time.monotonic()
            try:
                result["reply"] = echo_request(conn, 1234)
            except (OSError, http.client.HTTPException) as exc:
                result["error"] = exc
            finally:
                result["elapsed"] = time.monotonic() - started
                conn.close()

        thread = threading.Thread(target=predict, daemon=True)
        thread.start()

        server.wait_healthy(timeout=20)
        healthy = server.get("/health")
        assert healthy.status == 200 and healthy.json() == {"health": "true"}

        thread.join(timeout=20)
        assert not thread.is_alive(), "the request sent while loading never finished"
        assert "error" not in result, repr(result.get("error"))
        reply = result["reply"]
        assert reply.status == 200, reply.body
        assert reply.json()["size"] == 1234
        assert result["elapsed"] > 0.5, "the request did not wait for the model"
    finally:
        server.stop()


def _wait_workers(server: Server, count: int, exclude: set[int] = frozenset(), timeout: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) == count and not pids & exclude:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers {pids}, wanted {count} without {exclude}\n{server.logs()}")


def test_killed_worker_is_replaced(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR)
    try:
        before = _wait_workers(server, 2)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after = _wait_workers(server, 2, exclude={victim})
        assert after != before
        assert before - {victim} <= after, "the surviving worker should have been kept"
        server.wait_healthy(timeout=20)
        answered_by = set()
        for i in range(20):
            conn = server.connect(timeout=20)  # new connections spread over both workers
            try:
                reply = echo_request(conn, 100 + i)
            finally:
                conn.close()
            assert reply.status == 200, reply.body
            assert reply.json()["size"] == 100 + i
            answered_by.add(reply.json()["pid"])
        assert victim not in answered_by
        assert answered_by <= after
        assert server.proc.poll() is None
        assert f"Worker (pid:{victim}) was sent SIGKILL" in server.logs()
    finally:
        server.stop()


def test_model_load_failure_stops_the_server(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"ECHO_FAIL_LOAD": "1"}, wait=False)
    try:
        try:
            code = server.proc.wait(timeout=15)
        except Exception:
            code = None
        assert code is not None, f"still running 15 s after a failed load\n{server.logs()}"
        assert code != 0
        logs = server.logs()
        assert "ECHO_FAIL_LOAD is set" in logs, logs  # the exception's own text
        assert "model failed to load" in logs, logs
    finally:
        server.kill_group()


def test_master_killed_exits_non_zero(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR)
    try:
        workers = server.worker_pids()
        assert workers
        os.kill(server.proc.pid, signal.SIGKILL)  # run.sh exec'd the master: this is that process
        code = server.proc.wait(timeout=5)
        assert code != 0
    finally:
        server.kill_group()  # the orphaned workers are in the same session


def _wait_record(server: Server, predicate, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for record in server.log_records():
            if predicate(record):
                return record
        if time.monotonic() >= deadline:
            raise AssertionError(f"no such log record\n{server.logs()}")
        time.sleep(0.05)


def test_log_lines_json(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_GRACE_SECONDS": "7"})
    try:
        started = _wait_record(server, lambda r: r.get("message") == "maserve started")
        assert started["port"] == server.port
        assert started["workers"] == 2
        assert started["keepalive_seconds"] == 200
        assert started["grace_seconds"] == 7

        conn = server.connect()
        try:
            reply = echo_request(conn, 321, headers={"X-Request-Id": "lifecycle-test-42"})
            plain = echo_request(conn, 5)
        finally:
            conn.close()
        assert reply.status == 200, reply.body
        assert reply.headers["x-request-id"] == "lifecycle-test-42"
        assert plain.status == 200 and plain.headers.get("x-request-id")  # one is made when none is given

        record = _wait_record(server, lambda r: r.get("request_id") == "lifecycle-test-42")
        assert list(record)[:4] == ["time", "level", "logger", "message"]  # the shape of every other line
        assert (record["level"], record["logger"], record["message"]) == ("INFO", "maserve.access", "request")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record["time"]
        assert record["method"] == "POST"
        assert record["path"] == "/echo"
        assert record["status"] == 200
        assert isinstance(record["latency_ms"], (int, float)) and record["latency_ms"] >= 0
        assert record["bytes"] == len(reply.body)
        generated = _wait_record(server, lambda r: r.get("request_id") == plain.headers["x-request-id"])
        assert generated["status"] == 200
        # Every line on stdout is one JSON object.
        logs = server.logs()
        lines = [line for line in logs[: logs.rfind("\n")].splitlines() if line.strip()]  # complete lines
        assert all(isinstance(json.loads(line), dict) for line in lines)
    finally:
        server.stop()


def test_log_lines_text(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_LOG_FORMAT": "text"})
    try:
        conn = server.connect()
        try:
            reply = echo_request(conn, 77, headers={"X-Request-Id": "text-log-7"})
        finally:
            conn.close()
        assert reply.status == 200 and reply.headers["x-request-id"] == "text-log-7"
        logs = server.wait_for_log("request_id=text-log-7")
        assert server.log_records() == [], "text format should not print JSON lines"
        started = next(line for line in logs.splitlines() if "maserve started" in line)
        for part in (f"port={server.port}", "workers=2", "keepalive_seconds=200", "grace_seconds=0"):
            assert part in started, started
        request_line = next(line for line in logs.splitlines() if "request_id=text-log-7" in line)
        for part in ("method=POST", "path=/echo", "status=200", "latency_ms=", f"bytes={len(reply.body)}"):
            assert part in request_line, request_line
        assert " INFO " in request_line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    maserve\.access: request "
                            r"request_id=text-log-7 method=POST .*", request_line), request_line
    finally:
        server.stop()


def _port_8080_busy() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            return True
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", 8080))
        except OSError:
            return True
    return False


@pytest.mark.skipif(_port_8080_busy(), reason="port 8080 is in use on this machine")
def test_listens_on_all_interfaces_port_8080_by_default(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, unset=("MASERVE_HOST", "MASERVE_PORT"), wait=False)
    try:
        assert server.port == 8080
        server.wait_healthy(timeout=30)
        reply = server.get("/health")
        assert reply.status == 200 and reply.json() == {"health": "true"}
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.read().splitlines()[1:]]
        listeners = {row[1] for row in rows if row[3] == "0A"}  # 0A: LISTEN
        assert "00000000:1F90" in listeners, listeners
    finally:
        server.stop()
