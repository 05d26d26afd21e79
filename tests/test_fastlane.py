"""maserve.http.fastlane against a real server: small POSTs to a model (batching or not) are
answered by the protocol itself, and must answer exactly as the ASGI way does (same status line, headers in the
same order, body, access line), in order on a pipelined connection, with the 504 at the request
timeout, the 408 and 499 of a body that stalls or is cut, `connection: close` when asked, and
through a graceful stop. A valid `traceparent` sends the same request the ASGI way (the lane
leaves traced requests to it), which gives each test its reference answer."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import pytest

from helpers import FIXTURE_MODELS, multipart, start_server

SUMS_DIR = FIXTURE_MODELS / "sums"  # batching (prepare + predict_batch), JSON
ECHO_DIR = FIXTURE_MODELS / "echo"  # predict alone, multipart
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("fastlane"), SUMS_DIR,
                          env={"MASERVE_WORKERS": "1", "MASERVE_REQUEST_TIMEOUT_SECONDS": "0.5",
                               "MASERVE_BODY_TIMEOUT_SECONDS": "2"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("fastlane-echo"), ECHO_DIR,
                          env={"MASERVE_WORKERS": "1", "MASERVE_REQUEST_TIMEOUT_SECONDS": "0.5"})
    yield server
    server.stop()


def post(body: dict | bytes, *headers: str, path: str = "/", content_type: str = "application/json") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def read_replies(sock: socket.socket, count: int, limit: float = 10) -> list[tuple[bytes, list[tuple[str, str]], bytes]]:
    """`count` replies from the socket: (status line, headers in order, body)."""
    sock.settimeout(limit)
    data = b""
    replies = []
    while len(replies) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(replies)} replies: {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
        length = int(dict(headers)["content-length"])
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed mid-body"
            data += chunk
        replies.append((status.encode(), headers, data[:length]))
        data = data[length:]
    return replies


def exchange(server, request: bytes, count: int = 1) -> list[tuple[bytes, list[tuple[str, str]], bytes]]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        return read_replies(sock, count)


def _shape(reply: tuple[bytes, list[tuple[str, str]], bytes]) -> tuple[bytes, list[str], bytes]:
    status, headers, body = reply
    return status, [name for name, _ in headers], body


@pytest.mark.parametrize("body", [{"numbers": [1, 2.5]}, {"numbers": []}, {"numbers": [1e308, 1e308]}],
                         ids=["ok", "invalid", "infinity"])
def test_the_lane_answers_what_the_asgi_way_answers(server, body) -> None:
    fast_id, asgi_id = f"fast-{len(json.dumps(body))}", f"asgi-{len(json.dumps(body))}"
    fast = exchange(server, post(body, f"X-Request-Id: {fast_id}"))[0]
    asgi = exchange(server, post(body, f"X-Request-Id: {asgi_id}", f"traceparent: {TRACEPARENT}"))[0]
    assert _shape(fast) == _shape(asgi)
    assert dict(fast[1])["x-request-id"] == fast_id and dict(asgi[1])["x-request-id"] == asgi_id
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", dict(fast[1])["date"])
    assert server.wait_log(lambda r: r.get("request_id") == fast_id) and server.wait_log(
        lambda r: r.get("request_id") == asgi_id)
    lines = {r["request_id"]: r for r in server.log_records() if r.get("request_id") in (fast_id, asgi_id)}
    fast_line, asgi_line = lines[fast_id], lines[asgi_id]
    assert asgi_line.pop("trace_id") == TRACEPARENT.split("-")[1]
    for line in (fast_line, asgi_line):
        line.pop("time"), line.pop("latency_ms"), line.pop("request_id")
    assert fast_line == asgi_line


@pytest.mark.parametrize("case", ["ok", "no file", "sleep not a number"])
def test_a_model_without_batches_answers_the_same_both_ways_and_its_504(echo_server, case) -> None:
    files = [] if case == "no file" else [("file", "blob.bin", b"x" * 3000)]
    fields = {"sleep": "soon"} if case == "sleep not a number" else None
    data, content_type = multipart(files, fields)
    request_id = case.replace(" ", "-")
    fast = exchange(echo_server, post(data, f"X-Request-Id: f-{request_id}", path="/echo", content_type=content_type))
    asgi = exchange(echo_server, post(data, f"X-Request-Id: a-{request_id}", f"traceparent: {TRACEPARENT}",
                                      path="/echo", content_type=content_type))
    assert _shape(fast[0]) == _shape(asgi[0])
    assert echo_server.wait_log(lambda r: r.get("request_id") == f"f-{request_id}")
    if case == "ok":
        slow, slow_type = multipart([("file", "blob.bin", b"x")], {"sleep": "1.5"})
        started = time.monotonic()
        status, _, body = exchange(echo_server, post(slow, path="/echo", content_type=slow_type))[0]
        assert status == b"HTTP/1.1 504 Gateway Timeout", body
        assert time.monotonic() - started < 1.4
        assert exchange(echo_server, post(data, path="/echo", content_type=content_type))[0][0] == b"HTTP/1.1 200 OK"


def test_pipelined_requests_are_answered_in_order(server) -> None:
    """A slow batched request, then a health check, a fast one and a traced one, in one write:
    the answers come back in that order although the later ones are quicker."""
    requests = (post({"numbers": [1], "sleep": 0.3}) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                + post({"numbers": [2]}) + post({"numbers": [3]}, f"traceparent: {TRACEPARENT}"))
    replies = exchange(server, requests, 4)
    assert [status for status, _, _ in replies] == [b"HTTP/1.1 200 OK"] * 4
    bodies = [json.loads(body) for _, _, body in replies]
    assert [bodies[0]["sum"], bodies[1], bodies[2]["sum"], bodies[3]["sum"]] == [1, {"health": "true"}, 2, 3]


def test_the_request_timeout_answers_504_and_the_worker_goes_on(server) -> None:
    # A batch over 20 ms sends the next one to the inference thread, where the timeout can answer
    # while it runs (one run on the event loop holds it, the ASGI way's timeout as well).
    assert exchange(server, post({"numbers": [0], "sleep": 0.1}))[0][0] == b"HTTP/1.1 200 OK"
    started = time.monotonic()
    status, _, body = exchange(server, post({"numbers": [1], "sleep": 1.5}, "X-Request-Id: slow-1"))[0]
    assert status == b"HTTP/1.1 504 Gateway Timeout", body
    assert time.monotonic() - started < 1.4  # at the timeout, not when the batch ended
    assert json.loads(body)["error_code"] == "MASERVE.INFERENCE_TIMEOUT"
    status, _, body = exchange(server, post({"numbers": [4, 5]}))[0]
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["sum"] == 9
    assert server.wait_log(lambda r: r.get("request_id") == "slow-1" and r.get("status") == 504)


def test_a_batch_ending_after_its_504_sends_and_logs_nothing_more(server) -> None:
    """The request timeout answers while the batch runs on; the batch's own answer, when it comes,
    is dropped: nothing more arrives on the connection, its next reply is the next request's, and
    the timed-out request has one access line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post({"numbers": [0], "sleep": 0.1}))  # over 20 ms: the next batch runs in the thread
        assert read_replies(sock, 1)[0][0] == b"HTTP/1.1 200 OK"
        sock.sendall(post({"numbers": [1], "sleep": 1.0}, "X-Request-Id: late-1"))
        assert read_replies(sock, 1)[0][0] == b"HTTP/1.1 504 Gateway Timeout"
        time.sleep(1.0)  # the batch ends meanwhile
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            stray = sock.recv(65536)
            pytest.fail(f"bytes after the 504: {stray!r}")
        sock.sendall(post({"numbers": [2, 3]}, "X-Request-Id: after-late"))
        status, _, body = read_replies(sock, 1)[0]
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["sum"] == 5
    assert server.wait_log(lambda r: r.get("request_id") == "after-late")
    assert [r["status"] for r in server.log_records() if r.get("request_id") == "late-1"] == [504]


def test_a_stalled_body_gets_408_and_a_cut_one_logs_499(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(b'{"numbers": [1]}', "X-Request-Id: stall-1")[:-5])  # five bytes short, then nothing
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert server.wait_log(lambda r: r.get("request_id") == "stall-1" and r.get("status") == 408)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(b'{"numbers": [1]}', "X-Request-Id: cut-1")[:-5])
        time.sleep(0.2)
    assert server.wait_log(lambda r: r.get("request_id") == "cut-1" and r.get("status") == 499)
    assert exchange(server, post({"numbers": [7]}))[0][0] == b"HTTP/1.1 200 OK"


def test_connection_close_is_kept_and_http_1_0_is_answered(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post({"numbers": [1]}, "Connection: close"))
        status, headers, _ = read_replies(sock, 1)[0]
        assert status == b"HTTP/1.1 200 OK" and ("connection", "close") in headers
        assert sock.recv(10) == b""  # closed after the answer
    old = post({"numbers": [2]}).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(old)
        status, _, body = read_replies(sock, 1)[0]
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["sum"] == 2


def test_a_request_in_flight_at_sigterm_is_answered(tmp_path) -> None:
    server = start_server(tmp_path, SUMS_DIR, env={"MASERVE_WORKERS": "1", "MASERVE_GRACE_SECONDS": "0.5",
                                                   "MASERVE_DRAIN_SECONDS": "5"})
    try:
        replies: list = []
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(post({"numbers": [1], "sleep": 0.1}))
        assert read_replies(sock, 1)[0][0] == b"HTTP/1.1 200 OK"  # the batch estimate is known: the next goes inline
        thread = threading.Thread(target=lambda: replies.extend(read_replies(sock, 1)), daemon=True)
        sock.sendall(post({"numbers": [2], "sleep": 2}))
        thread.start()
        time.sleep(0.3)
        server.signal(signal.SIGTERM)  # the grace (0.5 s) ends while it runs: the drain finishes it
        thread.join(timeout=15)
        sock.close()
        assert replies and replies[0][0] == b"HTTP/1.1 200 OK", replies
        assert ("connection", "close") in replies[0][1]  # answered in the grace: the client reconnects
        assert json.loads(replies[0][2])["sum"] == 2
        assert server.proc.wait(timeout=15) == 0
    finally:
        server.stop()
