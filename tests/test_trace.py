"""W3C trace context: a valid `traceparent`'s trace id is in the access line and in the model's own
log lines of that request; an invalid one is ignored (the request is served as without one)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import websockets

from helpers import FIXTURE_MODELS, request, start_server
from maserve.logs import trace_id_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("header, expected", [
    (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
    (f"01-{TRACE}-00f067aa0ba902b7-01-future", TRACE),  # a later version may add fields
    (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly four
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
    (f"00-{TRACE}-" + "0" * 16 + "-01", None),
    (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # lowercase hex only
    ("garbage", None),
])
def test_traceparent_validation(header, expected):
    assert trace_id_of(header.encode()) == expected


def test_the_trace_id_joins_the_access_line_and_the_models_logs(tmp_path):
    server = start_server(tmp_path, FIXTURE_MODELS / "hog", env={"MASERVE_WORKERS": "1"})
    try:
        conn = server.connect()
        try:
            for traceparent, rid in ((f"00-{TRACE}-00f067aa0ba902b7-01", "traced-1"), ("00-bad", "untraced-1")):
                reply = request(conn, "POST", "/", json.dumps({"megabytes": 0, "log": True}).encode(),
                                {"Content-Type": "application/json", "traceparent": traceparent, "X-Request-Id": rid})
                assert reply.status == 200
        finally:
            conn.close()
        access = server.wait_log(lambda r: r.get("request_id") == "traced-1")
        assert access and access[0]["trace_id"] == TRACE
        untraced = server.wait_log(lambda r: r.get("request_id") == "untraced-1")
        assert untraced and "trace_id" not in untraced[0]
        model_lines = [r for r in server.log_records() if r.get("message") == "the model logs from its thread"]
        assert len(model_lines) == 2
        assert model_lines[0].get("trace_id") == TRACE and "trace_id" not in model_lines[1]
    finally:
        server.stop()


def _traceparent(trace: str) -> str:
    return f"00-{trace}-00f067aa0ba902b7-01"


def _post_json(port: int, path: str, payload: dict, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _concurrently(calls: list) -> list:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_concurrent_requests_each_log_only_their_own_trace_id(tmp_path):
    """Access lines of one loop iteration are written together: none may take another's trace id."""
    server = start_server(tmp_path, FIXTURE_MODELS / "hog", env={"MASERVE_WORKERS": "1"})
    try:
        traces = {f"r-{i}": f"{i + 1:032x}" if i % 2 else None for i in range(32)}
        calls = [partial(_post_json, server.port, "/", {"megabytes": 0, "log": True},
                         {"X-Request-Id": rid, **({"traceparent": _traceparent(t)} if t else {})})
                 for rid, t in traces.items()]
        assert [status for status, _ in _concurrently(calls)] == [200] * len(calls)
        server.wait_log(lambda r: r.get("request_id") == "r-31" or len(
            [x for x in server.log_records() if x.get("request_id", "").startswith("r-")]) >= 32)
        lines = {r["request_id"]: r for r in server.log_records() if r.get("request_id", "").startswith("r-")}
        assert set(lines) == set(traces)
        assert {rid: line.get("trace_id") for rid, line in lines.items()} == traces
        model_lines = [r for r in server.log_records() if r.get("message") == "the model logs from its thread"]
        assert sorted(r.get("trace_id") or "" for r in model_lines) == sorted(t or "" for t in traces.values())
    finally:
        server.stop()


def test_batched_requests_prepare_with_their_trace_id_and_the_batch_names_all(tmp_path):
    server = start_server(tmp_path, FIXTURE_MODELS / "sums", env={"MASERVE_WORKERS": "1"})
    try:
        traces = {i: f"{i + 1:032x}" if i % 2 else None for i in range(24)}
        calls = [partial(_post_json, server.port, "/", {"numbers": [i], "sleep": 0.02, "log": True},
                         {"traceparent": _traceparent(t)} if t else {}) for i, t in traces.items()]
        answers = _concurrently(calls)
        assert [status for status, _ in answers] == [200] * len(calls)
        assert max(json.loads(body)["batch"] for _, body in answers) > 1  # some requests shared a batch
        prepares = server.wait_log(lambda r: str(r.get("message", "")).startswith("sums prepares"))
        deadline = time.monotonic() + 5
        while len(prepares) < len(traces) and time.monotonic() < deadline:
            time.sleep(0.1)
            prepares = [r for r in server.log_records() if str(r.get("message", "")).startswith("sums prepares")]
        assert {int(r["message"].split()[-1]): r.get("trace_id") for r in prepares} == traces
        batches = [r for r in server.log_records() if str(r.get("message", "")).startswith("sums predicts")]
        assert batches and all("trace_id" not in r for r in batches)
        named = [trace for r in batches for trace in r.get("trace_ids", [])]
        assert sorted(named) == sorted(t for t in traces.values() if t)  # each traced request in one batch
        assert all(len(r.get("trace_ids", [])) <= int(r["message"].split()[-1]) for r in batches)
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_streams_events_log_with_its_trace_id(tmp_path, mode):
    server = start_server(tmp_path, FIXTURE_MODELS / "stream", env={"MASERVE_WORKERS": "1"})
    try:
        status, body = _post_json(server.port, "/stream", {"count": 3, "log": True, "mode": mode},
                                  {"traceparent": _traceparent(TRACE), "Accept": "text/event-stream",
                                   "X-Request-Id": "traced-stream"})
        assert status == 200 and body.count(b"data:") == 3
        status, _ = _post_json(server.port, "/stream", {"count": 2, "log": True, "mode": mode},
                               {"Accept": "text/event-stream", "X-Request-Id": "plain-stream"})
        assert status == 200
        access = server.wait_log(lambda r: r.get("request_id") == "plain-stream")
        assert access and "trace_id" not in access[0]
        traced_access = [r for r in server.log_records() if r.get("request_id") == "traced-stream"]
        assert traced_access[0]["trace_id"] == TRACE and traced_access[0]["events"] == 3
        events = [r for r in server.log_records() if str(r.get("message", "")).startswith("stream event")]
        assert [r.get("trace_id") for r in events] == [TRACE] * 3 + [None] * 2
    finally:
        server.stop()


def test_a_websockets_messages_log_with_its_trace_id(tmp_path):
    server = start_server(tmp_path, FIXTURE_MODELS / "stream", env={"MASERVE_WORKERS": "1"})

    async def talk() -> None:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with websockets.connect(url, additional_headers={"traceparent": _traceparent(TRACE)}) as ws:
            await ws.send(json.dumps({"count": 2, "log": True}))  # streamed: one message per item
            assert [json.loads(await ws.recv())["index"] for _ in range(2)] == [0, 1]
            await ws.send(json.dumps({"count": 1, "log": True, "mode": "async"}))
            assert json.loads(await ws.recv())["index"] == 0

    try:
        asyncio.run(asyncio.wait_for(talk(), 30))
        access = server.wait_log(lambda r: r.get("message") == "websocket")
        assert access and access[0]["trace_id"] == TRACE and access[0]["messages_in"] == 2
        events = [r for r in server.log_records() if str(r.get("message", "")).startswith("stream event")]
        assert [r.get("trace_id") for r in events] == [TRACE] * 3
    finally:
        server.stop()
