"""Process faults against a real server: a worker killed under load, the master killed, a model
that allocates without bound under a memory limit. Bounded in time; everything on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

from helpers import FIXTURE_MODELS, child_pids, start_server

HOG_DIR = FIXTURE_MODELS / "hog"


def post(port: int, payload: dict, timeout: float = 20) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/", json.dumps(payload), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(predicate, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def test_a_worker_killed_under_load_costs_only_its_requests(tmp_path):
    server = start_server(tmp_path, HOG_DIR)
    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(200):  # bounded: about 0.2 s a request, stopped after ~4 s
            if stop.is_set():
                return
            try:
                status, _ = post(server.port, {"megabytes": 0, "sleep": 0.2})
                outcomes.append("ok" if status == 200 else f"status {status}")
            except (OSError, http.client.HTTPException):
                outcomes.append("failed")

    try:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        victim = min(child_pids(server.proc.pid))
        os.kill(victim, signal.SIGKILL)
        time.sleep(2.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        failed = outcomes.count("failed")
        assert set(outcomes) <= {"ok", "failed"}, outcomes  # no 500s: only lost connections
        assert failed <= 8  # at most one request per client: those on the killed worker
        assert outcomes.count("ok") > 20  # the other worker, then the replacement, kept serving
        died = server.wait_log(lambda r: r.get("message", "").startswith("worker killed by SIGKILL"))
        assert died and died[0]["level"] == "WARNING" and died[0]["pid"] == victim
        assert died[0]["signal"] == "SIGKILL" and 0 <= died[0]["requests_in_flight"] <= 8
        assert failed >= died[0]["requests_in_flight"]
        assert wait_for(lambda: len(child_pids(server.proc.pid) - {victim}) == 2, 20)
        assert wait_for(lambda: health(server.port) == 200, 20)
        assert post(server.port, {"megabytes": 0})[0] == 200
    finally:
        stop.set()
        server.stop()


def test_workers_stop_listening_when_the_master_is_killed(tmp_path):
    server = start_server(tmp_path, HOG_DIR)
    try:
        workers = child_pids(server.proc.pid)
        assert len(workers) == 2
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=5)

        def gone() -> bool:
            return not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in workers)

        assert wait_for(gone, 15), "orphaned workers kept running"
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            listening = True
        except OSError:
            listening = False
        assert not listening
        assert "the master process is gone" in server.logs()
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_model_out_of_memory_fails_its_request_and_its_worker_is_replaced(tmp_path):
    """ulimit -v bounds the server's address space: the model's MemoryError is a JSON 500, the
    worker restarts (the log says why) and the server keeps serving."""
    server = start_server(tmp_path, HOG_DIR, env={"MASERVE_WORKERS": "1"}, ulimit="-v 2000000")
    try:
        before = post(server.port, {"megabytes": 1})[1]["pid"]
        status, body = post(server.port, {"megabytes": 4000})
        assert status == 500 and body["error_code"] == "MASERVE.OUT_OF_MEMORY"
        assert "restarts" in body["error_msg"]
        assert server.wait_log(lambda r: r.get("message", "").startswith("the model ran out of memory: this worker"))
        assert wait_for(lambda: before not in child_pids(server.proc.pid) and len(child_pids(server.proc.pid)) == 1,
                        30)
        assert wait_for(lambda: health(server.port) == 200, 30)
        status, body = post(server.port, {"megabytes": 1})
        assert status == 200 and body["pid"] != before
        assert server.proc.poll() is None
    finally:
        server.stop()
