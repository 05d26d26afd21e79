"""The iris example, served for real: its samples, its held-out accuracy, and the errors its schema implies."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from helpers import ROOT, Reply, Server, assert_matches_response_schema, multipart, request, start_server

IRIS_DIR = ROOT / "examples" / "iris"
IRIS_CONFIG = IRIS_DIR / "config.json"
SAMPLES = IRIS_DIR / "samples"


@pytest.fixture(scope="module")
def iris_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Responses validated by the server too: an answer that breaks the schema would be a 500 here."""
    server = start_server(tmp_path_factory.mktemp("iris"), IRIS_DIR, env={"MASERVE_VALIDATE_RESPONSES": "1"})
    yield server
    server.stop()


def _post(server: Server, body: bytes, content_type: str = "application/json") -> Reply:
    conn = server.connect()
    try:
        return request(conn, "POST", "/", body, {"Content-Type": content_type})
    finally:
        conn.close()


def _classify(server: Server, value: Any) -> Reply:
    return _post(server, json.dumps(value).encode())


def _error(reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"error_code", "error_msg"}
    assert body["error_code"] == code, body
    return body["error_msg"]


def test_sample_request_gets_the_sample_answer(iris_server: Server) -> None:
    reply = _post(iris_server, (SAMPLES / "request.json").read_bytes())
    assert reply.status == 200, reply.body
    expected = json.loads((SAMPLES / "response.json").read_text())
    answer = reply.json()
    assert answer["label"] == expected["label"]
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-3)
    assert_matches_response_schema(IRIS_CONFIG, "/", reply.body)


def test_heldout_accuracy_matches_the_metrics_in_config(iris_server: Server) -> None:
    heldout = json.loads((SAMPLES / "heldout.json").read_text())
    assert len(heldout) == 50
    conn = iris_server.connect()
    correct = 0
    try:
        for row in heldout:
            reply = request(conn, "POST", "/", json.dumps({"features": row["features"]}).encode(), {"Content-Type": "application/json"})
            assert reply.status == 200, reply.body
            assert_matches_response_schema(IRIS_CONFIG, "/", reply.body)
            correct += reply.json()["label"] == row["label"]
    finally:
        conn.close()
    accuracy = json.loads(IRIS_CONFIG.read_text())["metrics"]["accuracy"]
    assert correct / len(heldout) == pytest.approx(accuracy, abs=1e-4)
    assert accuracy >= 0.9


@pytest.mark.parametrize(
    "value, code, message",
    [
        (
            {"features": [5.1, 3.5, 1.4]},
            "MASERVE.INVALID_FIELD",
            "field 'features': [5.1, 3.5, 1.4] is not valid: [5.1, 3.5, 1.4] is too short (at $.features)",
        ),
        (
            {"features": [5.1, 3.5, 1.4, 0.2, 9.9]},
            "MASERVE.INVALID_FIELD",
            "field 'features': [5.1, 3.5, 1.4, 0.2, 9.9] is not valid: [5.1, 3.5, 1.4, 0.2, 9.9] is too long (at $.features)",
        ),
        (
            {"features": [5.1, "3.5", 1.4, 0.2]},
            "MASERVE.INVALID_FIELD",
            "field 'features': [5.1, \"3.5\", 1.4, 0.2] is not valid: '3.5' is not of type 'number' (at $.features[1])",
        ),
        ({"petals": [1, 2, 3, 4]}, "MASERVE.MISSING_FIELD", "missing required field 'features'"),
        (  # what a fuzzer found: float32 overflows to inf and the probabilities came out NaN
            {"features": [1e300, 3.5, 1.4, 0.2]},
            "MASERVE.INVALID_FIELD",
            "field 'features': [1e+300, 3.5, 1.4, 0.2] is not valid: 1e+300 is greater than the maximum of 100 "
            "(at $.features[0])",
        ),
    ],
)
def test_schema_violations(iris_server: Server, value: Any, code: str, message: str) -> None:
    assert _error(_classify(iris_server, value), 400, code) == message


def test_wrong_content_type(iris_server: Server) -> None:
    body, ctype = multipart([], {"features": "[5.1, 3.5, 1.4, 0.2]"})
    message = _error(_post(iris_server, body, ctype), 415, "MASERVE.UNSUPPORTED_MEDIA_TYPE")
    assert message == "this API accepts Content-Type application/json, got multipart/form-data"


def test_malformed_json(iris_server: Server) -> None:
    message = _error(_post(iris_server, b'{"features": [5.1,'), 400, "MASERVE.MALFORMED_REQUEST")
    assert message.startswith("the body is not valid JSON: ")


def test_openapi_describes_the_json_api(iris_server: Server) -> None:
    reply = iris_server.get("/openapi.json")
    assert reply.status == 200, reply.body
    doc = reply.json()
    config = json.loads(IRIS_CONFIG.read_text())
    body = doc["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == config["apis"][0]["request"]["data"]
    assert doc["info"]["title"] == "predict_analysis"
