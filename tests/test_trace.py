"""W3C trace context: a valid `traceparent`'s trace id is in the access line and in the model's own
log lines of that request; an invalid one is ignored (the request is served as without one)."""

from __future__ import annotations

import json

import pytest

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
