"""No invalid JSON ever: NaN and Infinity in a model's answer are a 500 MASERVE.INVALID_RESPONSE
naming the field, in the plain and the batched paths (streams and WebSocket: test_sse.py and
test_websocket.py), parsed here with a strict parser."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import FIXTURE_MODELS, request, start_server
from maserve.jsonout import non_finite_path, to_json
from maserve.errors import InvalidResponse, ModelError


def strict(body: bytes):
    """json.loads refusing NaN, Infinity and -Infinity, as browsers' JSON.parse and Go do."""
    def refuse(constant: str):
        raise AssertionError(f"{constant} in a response: {body[:200]!r}")

    return json.loads(body, parse_constant=refuse)


def post_json(server, path: str, payload: dict, headers: dict | None = None):
    conn = server.connect()
    try:
        return request(conn, "POST", path, json.dumps(payload).encode(),
                       {"Content-Type": "application/json", **(headers or {})})
    finally:
        conn.close()


@pytest.mark.parametrize("value, expected", [
    ({"a": [1.0, {"b": math.nan}]}, ("NaN", "$.a[1].b")),
    ([math.inf], ("Infinity", "$[0]")),
    ({"p": {"setosa": -math.inf}}, ("-Infinity", "$.p.setosa")),
    ({"weird key": (1, math.nan)}, ("NaN", '$["weird key"][1]')),
    ({"fine": [1.5, "nan", None]}, None),
])
def test_non_finite_path_names_the_field(value, expected):
    assert non_finite_path(value) == expected


def test_to_json_errors():
    with pytest.raises(InvalidResponse, match=r"NaN at \$\.x"):
        to_json({"x": math.nan})
    with pytest.raises(ModelError, match="not JSON-serialisable"):
        to_json({"x": object()})
    assert to_json({"label": "猫"}) == '{"label": "猫"}'  # UTF-8 characters, not escapes


def test_plain_path_overflow_to_infinity_is_500_naming_the_field(tmp_path):
    server = start_server(tmp_path, FIXTURE_MODELS / "multi", env={"MASERVE_WORKERS": "1"})
    try:
        reply = post_json(server, "/sum", {"numbers": [1e308, 1e308]}, {"X-Request-Id": "nan-probe-1"})
        assert reply.status == 500
        error = strict(reply.body)
        assert error["error_code"] == "MASERVE.INVALID_RESPONSE" and "Infinity at $.sum" in error["error_msg"]
        assert strict(post_json(server, "/sum", {"numbers": [1, 2]}).body) == {"sum": 3}  # still up
        logged = server.wait_log(lambda r: r.get("request_id") == "nan-probe-1")
        assert logged and logged[0]["level"] == "ERROR"
        assert logged[0]["error_code"] == "MASERVE.INVALID_RESPONSE"
    finally:
        server.stop()


def test_batched_path_fails_only_the_item_with_infinity(tmp_path):
    server = start_server(tmp_path, FIXTURE_MODELS / "sums", env={"MASERVE_WORKERS": "1"})
    try:
        payloads = [{"numbers": [1e308, 1e308] if i == 5 else [i, 1], "sleep": 0.2 if i == 0 else 0}
                    for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda p: post_json(server, "/", p), payloads))
        for i, reply in enumerate(replies):
            answer = strict(reply.body)
            if i == 5:
                assert reply.status == 500 and answer["error_code"] == "MASERVE.INVALID_RESPONSE"
                assert "Infinity at $.sum" in answer["error_msg"]
            else:
                assert reply.status == 200 and answer["sum"] == i + 1
        assert max(strict(r.body).get("batch", 1) for r in replies) > 1  # they did go in batches
    finally:
        server.stop()


@pytest.mark.parametrize("literal", ["1e999", "-1E+400", "1" + "0" * 400 + ".5", "2.5e0000400"])
def test_a_number_beyond_a_double_is_a_400_not_infinity(tmp_path_factory, literal):
    """1e999 reads as Infinity in Python, which passes any bound of a schema: refuse it."""
    server = start_server(tmp_path_factory.mktemp("huge"), FIXTURE_MODELS / "multi", env={"MASERVE_WORKERS": "1"})
    try:
        conn = server.connect()
        try:
            reply = request(conn, "POST", "/sum", f'{{"numbers": [1, {literal}]}}'.encode(),
                            {"Content-Type": "application/json"})
            assert reply.status == 400, reply.body
            error = strict(reply.body)
            assert error["error_code"] == "MASERVE.MALFORMED_REQUEST" and "beyond a double's range" in error["error_msg"]
            for fine in ("1e308", "1e-999", "1.5e+300", '"1e999"'):  # finite, underflow to 0, a string
                reply = request(conn, "POST", "/sum", f'{{"numbers": [1, {fine}]}}'.encode(),
                                {"Content-Type": "application/json"})
                assert reply.status in (200, 400) and "beyond a double" not in reply.body.decode()
        finally:
            conn.close()
    finally:
        server.stop()
