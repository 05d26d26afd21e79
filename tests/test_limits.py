"""Connection floods against a server with a low open-file limit (ulimit -n 256, so 128 connections
per worker): idle connections make room oldest first, busy ones beyond the caps get a fast 503 JSON
with Retry-After, the health check is answered throughout, and service is normal once the flood
ends. Every loop is bounded; everything is on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from helpers import FIXTURE_MODELS, start_server

HOG_DIR = FIXTURE_MODELS / "hog"
OPEN_FILES = 256
CAP = OPEN_FILES - 128  # maserve.http.limits: RESERVED_FILES
IN_FLIGHT_CAP = CAP // 4


@pytest.fixture
def server(tmp_path):
    server = start_server(tmp_path, HOG_DIR, env={"MASERVE_WORKERS": "1", "MASERVE_HEADER_TIMEOUT_SECONDS": "120",
                                                  "MASERVE_BODY_TIMEOUT_SECONDS": "120"},
                          ulimit=f"-n {OPEN_FILES}")
    yield server
    server.stop()


def post(server, payload: dict, timeout: float = 10) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("POST", "/", json.dumps(payload), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def health(server) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def hold(server, count: int, opening: bytes) -> list[socket.socket]:
    """`count` connections that each sent `opening` and then nothing."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if opening:
            sock.sendall(opening)
        held.append(sock)
    return held


def served_again(server, within: float = 10) -> None:
    """Once the flood is gone, requests are answered 200 again (within `within` seconds)."""
    deadline = time.monotonic() + within
    while post(server, {"megabytes": 0})[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert post(server, {"megabytes": 0})[0] == 200


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, BlockingIOError):
        return False
    except ConnectionResetError:
        return True


def answered_408(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(200).startswith(b"HTTP/1.1 408")
    except OSError:
        return False


def test_the_startup_log_names_the_limits(server):
    record = server.wait_log(lambda r: r.get("message") == "open-file limit and per-worker caps")[0]
    assert record["open_files"] == OPEN_FILES and record["max_connections"] == CAP
    assert record["max_in_flight"] == IN_FLIGHT_CAP


def test_idle_connections_make_room_oldest_first(server):
    """A flood of idle connections (a load balancer's pool) twice the cap: the server never runs out
    of descriptors, the newest survive, and every new request is served."""
    held = hold(server, CAP * 2, b"")
    try:
        time.sleep(0.5)
        oldest, newest = held[:CAP // 2], held[-CAP // 2:]
        assert all(closed_by_server(s) for s in oldest)
        assert not any(closed_by_server(s) for s in newest)
        assert post(server, {"megabytes": 0})[0] == 200
        assert health(server) == 200
    finally:
        for sock in held:
            sock.close()


def test_stalled_uploads_beyond_the_in_flight_cap_get_503_and_health_stays_200(server):
    opening = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
               b'{"megabytes"')
    held = hold(server, IN_FLIGHT_CAP + 4, opening)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        status, headers, body = post(server, {"megabytes": 0})
        assert status == 503 and body["error_code"] == "MASERVE.OVERLOADED"
        assert "MASERVE_MAX_IN_FLIGHT" in body["error_msg"] and headers["retry-after"] == "1"
        assert headers["connection"] == "close" and time.monotonic() - started < 5  # fast, not a wait
        assert all(health(server) == 200 for _ in range(5))
    finally:
        for sock in held:
            sock.close()
    served_again(server)
    assert server.wait_log(lambda r: r.get("message") == "back under the limits", timeout=10)
    starts = [r for r in server.log_records() if r.get("message", "").startswith("limit reached")]
    assert len(starts) == 1 and starts[0]["level"] == "WARNING"  # once per episode, with the numbers
    assert starts[0]["max_in_flight"] == IN_FLIGHT_CAP


def test_uploads_stalled_past_two_seconds_give_way_to_new_requests_at_the_in_flight_cap(server):
    """A slow-body flood: once the stalled uploads have sent next to nothing for over 2 s, a new
    request at the cap answers 408 to the oldest of them and is served, instead of a 503 for as
    long as the body timeout (120 s here) lets them hold their slots. Only as many go as needed:
    the first eviction frees a slot for each next request in turn (the 4 beyond the cap got 503)."""
    opening = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
               b'{"megabytes"')
    held = hold(server, IN_FLIGHT_CAP + 4, opening)
    try:
        time.sleep(2.5)
        statuses = [post(server, {"megabytes": 0})[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        evicted = [sock for sock in held if answered_408(sock)]
        assert len(evicted) == 1 and evicted[0] is held[0]  # the oldest
        assert all(health(server) == 200 for _ in range(3))
    finally:
        for sock in held:
            sock.close()
    lines = server.wait_log(lambda r: r.get("status") == 408 and "in-flight limit" in r.get("error_msg", ""))
    assert lines and "had sent 12 bytes" in lines[0]["error_msg"], lines


def test_a_slowloris_at_the_connection_cap_gives_way_to_real_requests(server):
    """Half-sent headers (busy, not idle, not yet requests) on every connection the cap allows.
    Within a second of them, a new request is refused with JSON (they might be slow real clients);
    after it, the one stuck longest is answered 408 and closed to make room, so requests and the
    health check are served while the slowloris lasts."""
    held = hold(server, CAP + 8, b"POST / HTTP/1.1\r\nHost: x\r\n")
    try:
        time.sleep(0.2)
        status, headers, body = post(server, {"megabytes": 0})
        assert status == 503 and "MASERVE_MAX_CONNECTIONS" in body["error_msg"]
        assert headers["retry-after"] == "1"
        assert health(server) == 200
        time.sleep(1.2)
        assert [post(server, {"megabytes": 0})[0] for _ in range(10)] == [200] * 10
        assert all(health(server) == 200 for _ in range(5))
        evicted = [s for s in held[:30] if answered_408(s)]
        assert len(evicted) >= 5  # the oldest stalled ones made room, as many as the new ones needed
    finally:
        for sock in held:
            sock.close()
    served_again(server)
