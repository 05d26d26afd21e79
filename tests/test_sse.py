"""Server-Sent Events: a model's iterator streamed event by event by a real server process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers import FIXTURE_MODELS, start_server
from sse_helpers import events, open_stream, stream

STREAM_DIR = FIXTURE_MODELS / "stream"
# Short limits so the timeout tests run quickly; the other requests stay well inside them.
TIMEOUTS = {"MASERVE_REQUEST_TIMEOUT_SECONDS": "2", "MASERVE_STREAM_TIMEOUT_SECONDS": "5"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("sse"), STREAM_DIR, env=TIMEOUTS)
    yield server
    server.stop()


def wait_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    return ""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_events_arrive_as_they_are_produced(server, mode):
    response, got = stream(server.port, "/stream", {"count": 4, "delay": 0.4, "mode": mode})
    assert response.status == 200
    assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
    assert response.getheader("cache-control") == "no-cache"
    assert [e.json()["index"] for e in got] == [0, 1, 2, 3]
    assert all(e.name == "message" for e in got)
    gaps = [b.arrived - a.arrived for a, b in zip(got, got[1:])]
    assert all(gap > 0.25 for gap in gaps), f"events were buffered: gaps {gaps}"
    # each event left the server right after the model produced it (its own timestamp)
    assert all(e.arrived > 0 for e in got)


def test_text_items_are_sent_as_text_with_one_data_line_per_line(server):
    _, got = stream(server.port, "/stream", {"count": 2, "text": True})
    assert [e.data for e in got] == ["line 0\nsecond line", "line 1\nsecond line"]


def test_a_non_iterator_answer_is_a_plain_json_reply(server):
    response, _ = stream(server.port, "/stream", {"count": 3, "stream": False})
    assert response.status == 200
    assert response.getheader("content-type") == "application/json"


def test_a_failure_before_the_first_event_is_a_json_error_with_its_status(server):
    conn, response = open_stream(server.port, "/stream", {"count": 3, "fail_at": 0})
    body = json.loads(response.read())
    conn.close()
    assert response.status == 400
    assert body == {"error_code": "MASERVE.INVALID_INPUT", "error_msg": "fail_at 0: refused before the first event"}
    conn, response = open_stream(server.port, "/stream", {"count": "three"})
    assert response.status == 400 and json.loads(response.read())["error_code"] == "MASERVE.INVALID_FIELD"
    conn.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failure_after_the_first_event_ends_the_stream_with_an_error_event(server, mode):
    _, got = stream(server.port, "/stream", {"count": 5, "fail_at": 2, "mode": mode})
    assert [e.name for e in got] == ["message", "message", "error"]
    assert got[-1].json() == {"error_code": "MASERVE.MODEL_ERROR", "error_msg": "the model failed while streaming: RuntimeError"}
    records = server.wait_log(lambda r: r.get("message") == "stream failed" and r.get("events") == 2)
    assert records and records[-1]["status"] == 200 and records[-1]["error_code"] == "MASERVE.MODEL_ERROR"


def test_nan_in_an_item_is_an_error_event_never_invalid_json(server):
    _, got = stream(server.port, "/stream", {"count": 3, "bad_at": 1})
    assert [e.name for e in got] == ["message", "error"]
    error = got[-1].json()
    assert error["error_code"] == "MASERVE.INVALID_RESPONSE" and "NaN at $.value" in error["error_msg"]
    for event in got:
        json.loads(event.data)  # strict parse: NaN would already have failed in the client


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_client_disconnect_stops_the_generator_within_one_item(server, tmp_path, mode):
    marker = tmp_path / f"closed-{mode}"
    conn, response = open_stream(server.port, "/stream", {"count": 1000, "delay": 0.2, "mode": mode,
                                                          "closed_file": str(marker)})
    received = events(response)
    assert [next(received).json()["index"] for _ in range(3)] == [0, 1, 2]
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    text = wait_file(marker, timeout=5)
    assert text.startswith("closed after "), f"the generator was not stopped: {text!r}"
    assert int(text.split()[-1]) <= 5  # three read, at most one in flight, one in the socket buffers
    records = server.wait_log(lambda r: r.get("message") == "stream: client gone")
    assert records and records[-1]["status"] == 499


def test_time_between_events_is_bounded_by_the_request_timeout(server, tmp_path):
    marker = tmp_path / "closed"
    started = time.monotonic()
    _, got = stream(server.port, "/stream", {"count": 3, "delay": 4, "closed_file": str(marker)})
    took = time.monotonic() - started
    assert [e.name for e in got] == ["message", "error"]
    assert got[-1].json() == {"error_code": "MASERVE.STREAM_TIMEOUT",
                              "error_msg": "no event within 2 s (MASERVE_REQUEST_TIMEOUT_SECONDS)"}
    assert took < 3.5  # the error came at the timeout, not when the model woke up
    assert wait_file(marker).startswith("closed after 1")
    records = server.wait_log(lambda r: r.get("error_code") == "MASERVE.STREAM_TIMEOUT")
    assert records and records[-1]["message"] == "stream failed"


def test_time_to_the_first_event_is_bounded_and_answered_as_json(server):
    conn, response = open_stream(server.port, "/stream", {"count": 3, "first_delay": 4, "mode": "async"})
    body = json.loads(response.read())
    conn.close()
    assert response.status == 504 and body["error_code"] == "MASERVE.STREAM_TIMEOUT"


def test_the_whole_stream_is_bounded_by_the_stream_timeout(server):
    _, got = stream(server.port, "/stream", {"count": 100, "delay": 0.5, "mode": "async"})
    assert got[-1].name == "error"
    assert got[-1].json() == {"error_code": "MASERVE.STREAM_TIMEOUT",
                              "error_msg": "the stream ran past 5 s (MASERVE_STREAM_TIMEOUT_SECONDS)"}
    assert 8 <= len(got) - 1 <= 11
    assert all(e.name == "message" for e in got[:-1])


def test_sigterm_streams_flow_through_the_grace_period_then_get_the_drain_window(tmp_path):
    """Grace 2 s, drain 4 s: a stream running at SIGTERM keeps flowing, a new one is accepted during
    the grace period, one that ends inside the drain window ends normally, and one that would run
    longer ends with an error event before the server exits; nothing is cut silently."""
    import signal
    import threading

    server = start_server(tmp_path, STREAM_DIR, env={"MASERVE_GRACE_SECONDS": "2", "MASERVE_DRAIN_SECONDS": "4",
                                                     "MASERVE_WORKERS": "1"})
    results: dict[str, list] = {}

    def run(name: str, body: dict) -> None:
        _, got = stream(server.port, "/stream", body, timeout=30)
        results[name] = got

    try:
        long = threading.Thread(target=run, args=("long", {"count": 200, "delay": 0.1, "mode": "async"}))
        long.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        time.sleep(1)  # inside the grace period: a new stream is still accepted
        short = threading.Thread(target=run, args=("short", {"count": 25, "delay": 0.1}))
        short.start()
        long.join(timeout=20)
        short.join(timeout=20)
        assert server.proc.wait(timeout=20) == 0
    finally:
        server.stop()
    assert [e.json()["index"] for e in results["short"]] == list(range(25))
    got = results["long"]
    assert got[-1].name == "error"
    assert got[-1].json()["error_code"] == "MASERVE.SERVICE_STOPPING"
    assert [e.json()["index"] for e in got[:-1]] == list(range(len(got) - 1))
    ended = got[-1].arrived - signalled
    assert 4 < ended < 6.5, f"the stream ended {ended:.1f} s after SIGTERM (grace 2 + drain 4, less a margin)"
    flowing = [e for e in got if signalled < e.arrived < signalled + 2]
    assert len(flowing) >= 10  # events kept coming through the grace period
