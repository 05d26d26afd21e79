"""Stalled and slow clients, against a real server: headers and bodies that never finish get a
408 JSON reply and are closed; a client that never reads its answer does not hold it for good."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from helpers import FIXTURE_MODELS, start_server

HOG_DIR = FIXTURE_MODELS / "hog"
ENV = {"MASERVE_WORKERS": "1", "MASERVE_HEADER_TIMEOUT_SECONDS": "2", "MASERVE_BODY_TIMEOUT_SECONDS": "3",
       "MASERVE_SEND_TIMEOUT_SECONDS": "2", "MASERVE_KEEPALIVE_SECONDS": "4"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("timeouts"), HOG_DIR, env=ENV)
    yield server
    server.stop()


def reply_of(sock: socket.socket, limit: float = 15) -> tuple[int, dict, float]:
    """Read until the server closes: (status, JSON body, seconds it took)."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), time.monotonic() - started


def healthy(server) -> bool:
    return server.get("/health").status == 200


def test_headers_that_stop_half_way_get_408_and_close(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Ty")
        status, body, took = reply_of(sock)
    assert status == 408 and body["error_code"] == "MASERVE.REQUEST_TIMEOUT"
    assert "MASERVE_HEADER_TIMEOUT_SECONDS" in body["error_msg"]
    assert 1.5 < took < 6  # the 2 s limit, found by a once-a-second sweep
    assert server.wait_log(lambda r: r.get("message", "").startswith("request headers incomplete"))
    assert healthy(server)


def test_a_body_that_stops_half_way_gets_408_and_an_access_line(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
                     b"X-Request-Id: stalled-body-1\r\n\r\n{\"megabytes\": ")
        status, body, took = reply_of(sock)
    assert status == 408 and "MASERVE_BODY_TIMEOUT_SECONDS" in body["error_msg"]
    assert 2.5 < took < 7
    logged = server.wait_log(lambda r: r.get("request_id") == "stalled-body-1")
    assert logged and logged[0]["status"] == 408 and logged[0]["error_code"] == "MASERVE.REQUEST_TIMEOUT"
    assert healthy(server)


def test_a_slow_but_steady_body_is_not_cut(server):
    """The body timeout bounds the whole body: one sent in pieces within it is answered."""
    payload = b'{"megabytes": 0}'
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload))
        for i in range(0, len(payload), 4):
            sock.sendall(payload[i:i + 4])
            time.sleep(0.4)  # 1.6 s in all, under the 3 s limit; each piece a separate read
        status, body, _ = reply_of(sock)
    assert status == 200 and body["allocated"] == 0


def test_a_client_that_never_reads_its_answer_is_dropped(server):
    request = json.dumps({"megabytes": 0, "answer_bytes": 40_000_000}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(request) + request)
        assert server.wait_log(lambda r: r.get("message", "").startswith("the client read nothing"), timeout=15)
        assert healthy(server)  # and the worker answers others meanwhile
        sock.settimeout(10)
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass  # aborted: the unsent rest is dropped
        assert received < 40_000_000
    finally:
        sock.close()


def seconds_until_closed(sock: socket.socket, since: float, limit: float = 15) -> float:
    """Wait for the server to close `sock` (nothing else arrives): seconds from `since`."""
    sock.settimeout(limit)
    assert sock.recv(1) == b""
    return time.monotonic() - since


def test_idle_connections_are_closed_at_the_keep_alive_limit_and_not_before(server):
    """MASERVE_KEEPALIVE_SECONDS (4 here): a keep-alive connection idle after its answer, and one
    that never sent a byte, are closed once idle that long (found by the once-a-second sweep)."""
    silent = socket.create_connection(("127.0.0.1", server.port))
    opened = time.monotonic()
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(2):  # the connection is kept alive between answers
            client.request("POST", "/", b'{"megabytes": 0}', {"Content-Type": "application/json"})
            response = client.getresponse()
            assert response.status == 200 and json.loads(response.read())["allocated"] == 0
            assert response.getheader("connection") != "close"
        answered = time.monotonic()
        assert client.sock is not None
        assert 3.5 < seconds_until_closed(client.sock, answered) < 7
        assert 3.5 < seconds_until_closed(silent, opened) < 7
    finally:
        client.close()
        silent.close()
    assert healthy(server)


def test_bytes_that_are_not_http_get_a_json_400_and_close(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        status, body, _ = reply_of(sock)
    assert status == 400 and body["error_code"] == "MASERVE.MALFORMED_REQUEST"
    assert healthy(server)
