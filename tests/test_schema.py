"""Requests are checked against the schema each api declares in config.json, answers optionally too,
and GET /openapi.json describes it all: exact error messages, per route, on real servers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from helpers import (
    FIXTURE_MODELS,
    MNIST_DIR,
    ROOT,
    Reply,
    Server,
    assert_matches_response_schema,
    multipart,
    request,
    start_server,
)
from maserve.config import ConfigError, load_config
from maserve.schema import RequestSchema, quick_check, without_files

MULTI_DIR = FIXTURE_MODELS / "multi"
MULTI_CONFIG = MULTI_DIR / "config.json"


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The several-api fixture, responses not validated (the default)."""
    server = start_server(tmp_path_factory.mktemp("multi"), MULTI_DIR, env={"MASERVE_WORKERS": "1"})
    yield server
    server.stop()


def _post(server: Server, path: str, body: bytes, content_type: str) -> Reply:
    conn = server.connect()
    try:
        return request(conn, "POST", path, body, {"Content-Type": content_type})
    finally:
        conn.close()


def _post_json(server: Server, path: str, value: Any) -> Reply:
    return _post(server, path, json.dumps(value).encode(), "application/json")


def _upload(server: Server, fields: dict[str, str], files: list[tuple[str, str, bytes]] | None = None) -> Reply:
    body, ctype = multipart([("file", "f.bin", b"abc")] if files is None else files, fields)
    return _post(server, "/upload", body, ctype)


def _error(reply: Reply, status: int, code: str) -> str:
    """The error_msg of an error reply, after checking its status, code and shape."""
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"error_code", "error_msg"}
    assert body["error_code"] == code, body
    return body["error_msg"]


# -- JSON api: POST /sum ------------------------------------------------------------------------
def test_json_api_answers_valid_requests(multi_server: Server) -> None:
    reply = _post_json(multi_server, "/sum", {"numbers": [1, 2.5, 3], "scale": 2})
    assert reply.status == 200, reply.body
    assert reply.json() == {"sum": 13.0}
    assert_matches_response_schema(MULTI_CONFIG, "/sum", reply.body)


@pytest.mark.parametrize(
    "value, code, message",
    [
        (
            {"numbers": [1, "a"]},
            "MASERVE.INVALID_FIELD",
            "field 'numbers': [1, \"a\"] is not valid: 'a' is not of type 'number' (at $.numbers[1])",
        ),
        ({"numbers": "1,2"}, "MASERVE.INVALID_FIELD", "field 'numbers': \"1,2\" is not valid: '1,2' is not of type 'array' (at $.numbers)"),
        ({"numbers": []}, "MASERVE.INVALID_FIELD", "field 'numbers': [] is not valid: [] should be non-empty (at $.numbers)"),
        ({"numbers": [1], "scale": None}, "MASERVE.INVALID_FIELD", "field 'scale': null is not valid: None is not of type 'number' (at $.scale)"),
        (
            {"numbers": [1], "extra": 1},
            "MASERVE.INVALID_FIELD",
            "request body is not valid: Additional properties are not allowed ('extra' was unexpected) (at $)",
        ),
        ({"scale": 2}, "MASERVE.MISSING_FIELD", "missing required field 'numbers'"),
        ([1, 2], "MASERVE.INVALID_FIELD", "the JSON body must be an object"),
    ],
)
def test_json_api_schema_violations(multi_server: Server, value: Any, code: str, message: str) -> None:
    assert _error(_post_json(multi_server, "/sum", value), 400, code) == message


def test_json_api_long_values_are_shortened_in_messages(multi_server: Server) -> None:
    message = _error(_post_json(multi_server, "/sum", {"numbers": ["x" * 500]}), 400, "MASERVE.INVALID_FIELD")
    assert message.startswith("field 'numbers': [\"xxxx")
    assert message.endswith("is not of type 'number' (at $.numbers[0])")
    assert len(message) < 300


def test_json_api_wrong_content_type(multi_server: Server) -> None:
    body, ctype = multipart([], {"numbers": "[1]"})
    message = _error(_post(multi_server, "/sum", body, ctype), 415, "MASERVE.UNSUPPORTED_MEDIA_TYPE")
    assert message == "this API accepts Content-Type application/json, got multipart/form-data"


# -- multipart api: POST /upload ----------------------------------------------------------------
def test_multipart_text_fields_arrive_as_their_declared_types(multi_server: Server) -> None:
    fields = {
        "repeat": "2",
        "verbose": "TRUE",
        "ratio": "0.5",
        "meta": '{"source": "camera"}',
        "tags": '["a", "b"]',
        "label": "42",
        "undeclared": "7",
    }
    reply = _upload(multi_server, fields)
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["size"] == 3
    assert answer["fields"] == {
        "repeat": 2,
        "verbose": True,
        "ratio": 0.5,
        "meta": {"source": "camera"},
        "tags": ["a", "b"],
        "label": "42",
        "undeclared": "7",
    }
    assert answer["types"] == {
        "repeat": "int",
        "verbose": "bool",
        "ratio": "float",
        "meta": "dict",
        "tags": "list",
        "label": "str",
        "undeclared": "str",
    }
    assert_matches_response_schema(MULTI_CONFIG, "/upload", reply.body)


def test_multipart_type_lists_try_each_type(multi_server: Server) -> None:
    reply = _upload(multi_server, {"repeat": "1", "ratio": "null"})
    assert reply.status == 200, reply.body
    assert reply.json()["fields"] == {"repeat": 1, "ratio": None}


@pytest.mark.parametrize(
    "fields, code, message",
    [
        ({"repeat": "two"}, "MASERVE.INVALID_FIELD", "field 'repeat': \"two\" is not valid: 'two' is not of type 'integer' (at $.repeat)"),
        ({"repeat": "1.5"}, "MASERVE.INVALID_FIELD", "field 'repeat': \"1.5\" is not valid: '1.5' is not of type 'integer' (at $.repeat)"),
        ({"repeat": "5"}, "MASERVE.INVALID_FIELD", "field 'repeat': 5 is not valid: 5 is greater than the maximum of 3 (at $.repeat)"),
        (
            {"repeat": "1", "verbose": "yes"},
            "MASERVE.INVALID_FIELD",
            "field 'verbose': \"yes\" is not valid: 'yes' is not of type 'boolean' (at $.verbose)",
        ),
        (
            {"repeat": "1", "ratio": "NaN"},
            "MASERVE.INVALID_FIELD",
            "field 'ratio': \"NaN\" is not valid: 'NaN' is not of type 'number', 'null' (at $.ratio)",
        ),
        (
            {"repeat": "1", "meta": '{"x": 1}'},
            "MASERVE.INVALID_FIELD",
            "field 'meta': {\"x\": 1} is not valid: 'source' is a required property (at $.meta)",
        ),
        (
            {"repeat": "1", "tags": '["a", 2]'},
            "MASERVE.INVALID_FIELD",
            "field 'tags': [\"a\", 2] is not valid: 2 is not of type 'string' (at $.tags[1])",
        ),
        ({"verbose": "true"}, "MASERVE.MISSING_FIELD", "missing required field 'repeat'"),
    ],
)
def test_multipart_schema_violations(multi_server: Server, fields: dict[str, str], code: str, message: str) -> None:
    assert _error(_upload(multi_server, fields), 400, code) == message


def test_multipart_file_field_rules(multi_server: Server) -> None:
    missing = _upload(multi_server, {"repeat": "1"}, files=[])
    assert _error(missing, 400, "MASERVE.MISSING_FIELD") == "missing required file field 'file'"
    extra = _upload(multi_server, {"repeat": "1"}, files=[("file", "a.bin", b"a"), ("other", "b.bin", b"b")])
    assert _error(extra, 400, "MASERVE.UNEXPECTED_FIELD") == "unexpected file field 'other'; this API takes files in: file"
    text = _upload(multi_server, {"repeat": "1", "file": "not a file"}, files=[])
    assert _error(text, 400, "MASERVE.INVALID_FIELD") == "field 'file' must be a file upload"


def test_multipart_api_wrong_content_type(multi_server: Server) -> None:
    message = _error(_post_json(multi_server, "/upload", {"repeat": 1}), 415, "MASERVE.UNSUPPORTED_MEDIA_TYPE")
    assert message == "this API accepts Content-Type multipart/form-data, got application/json"


# -- config.json owns the paths it declares -----------------------------------------------------
def test_declared_openapi_path_belongs_to_the_config(multi_server: Server) -> None:
    reply = _post_json(multi_server, "/openapi.json", {})
    assert reply.status == 200, reply.body
    assert reply.json() == {"custom": True}
    reply = multi_server.get("/openapi.json")
    _error(reply, 405, "MASERVE.METHOD_NOT_ALLOWED")
    assert reply.headers["allow"] == "POST"


# -- responses ------------------------------------------------------------------------------------
def test_responses_are_not_validated_by_default_but_the_helper_catches_them(multi_server: Server) -> None:
    reply = _post_json(multi_server, "/sum", {"numbers": [1], "answer_wrong": True})
    assert reply.status == 200, reply.body
    with pytest.raises(AssertionError, match="'not a number' is not of type 'number' \\(at sum\\)"):
        assert_matches_response_schema(MULTI_CONFIG, "/sum", reply.body)


def test_invalid_responses_answer_500_when_validation_is_on(tmp_path: Path) -> None:
    server = start_server(tmp_path, MULTI_DIR, env={"MASERVE_WORKERS": "1", "MASERVE_VALIDATE_RESPONSES": "1"})
    try:
        good = _post_json(server, "/sum", {"numbers": [1, 2]})
        assert good.status == 200, good.body
        assert good.json() == {"sum": 3}
        conn = server.connect()
        try:
            body = json.dumps({"numbers": [1], "answer_wrong": True}).encode()
            reply = request(conn, "POST", "/sum", body, {"Content-Type": "application/json", "X-Request-Id": "bad-answer"})
        finally:
            conn.close()
        expected = "the model's answer to POST /sum does not match the response schema: 'not a number' is not of type 'number' (at $.sum)"
        assert _error(reply, 500, "MASERVE.INVALID_RESPONSE") == expected
        records = server.wait_log(lambda r: r.get("request_id") == "bad-answer" and r.get("status") == 500)
        assert records and records[0]["error_msg"] == expected
    finally:
        server.stop()


# -- schemas are compiled at construction ---------------------------------------------------------
def test_an_invalid_request_schema_is_refused_when_compiled() -> None:
    """load_config checks schemas too; this guards the compile step for configs built otherwise."""
    api = dataclasses.replace(load_config(MULTI_CONFIG).apis[0], request_schema={"properties": {"scale": {"type": "decimal"}}})
    with pytest.raises(ConfigError, match=r"request schema of POST /sum: not a valid JSON schema: .*decimal.* \(at \$\.properties\.scale\.type\)"):
        RequestSchema(api)


# -- GET /openapi.json ---------------------------------------------------------------------------
@pytest.mark.skipif(not (MNIST_DIR / "model.onnx").exists(), reason="examples/mnist/model.onnx missing")
def test_openapi_document_of_the_mnist_server(mnist_server: Server) -> None:
    reply = mnist_server.get("/openapi.json")
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json"
    doc = reply.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] == "image_classification"
    assert set(doc["paths"]) == {"/", "/health"}
    post = doc["paths"]["/"]["post"]
    request_schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert request_schema["properties"]["images"] == {"type": "string", "format": "binary"}
    assert request_schema["required"] == ["images"]
    config = json.loads((MNIST_DIR / "config.json").read_text())
    declared = config["apis"][0]["response"]["data"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == declared
    for status in ("400", "404", "405", "413", "415", "500", "504"):
        ref = post["responses"][status]["$ref"].split("/")[-1]
        error = doc["components"]["responses"][ref]["content"]["application/json"]["schema"]
        assert doc["components"]["schemas"][error["$ref"].split("/")[-1]]["required"] == ["error_code", "error_msg"]
    assert set(doc["paths"]["/health"]["get"]["responses"]) == {"200", "503"}


@pytest.mark.skipif(not (MNIST_DIR / "model.onnx").exists(), reason="examples/mnist/model.onnx missing")
def test_openapi_path_is_get_only_and_listed(mnist_server: Server) -> None:
    reply = _post(mnist_server, "/openapi.json", b"{}", "application/json")
    _error(reply, 405, "MASERVE.METHOD_NOT_ALLOWED")
    assert reply.headers["allow"] == "GET, HEAD"
    message = _error(mnist_server.get("/nowhere"), 404, "MASERVE.NOT_FOUND")
    assert message == "no API at /nowhere; this service answers: POST /, WebSocket /ws, GET /health, GET /openapi.json"


# -- the quick checks never accept what jsonschema refuses -----------------------------------------
_INSTANCES: list[Any] = [
    {}, [], None, True, 0, 1, 1.0, 1.5, -3, "x", "setosa", "",
    {"numbers": [1]}, {"numbers": [1, 2.5], "scale": 2}, {"numbers": []}, {"numbers": [True]}, {"numbers": [1], "x": 1},
    {"numbers": [1], "scale": None}, {"numbers": [1], "answer_wrong": 1}, {"numbers": "1"},
    {"features": [1, 2, 3, 4]}, {"features": [1, 2, 3]}, {"features": [1, 2, 3, 4, 5]}, {"features": [1, "2", 3, 4]},
    {"features": [1.5, 2, 3, float("nan")]}, {"features": [False, 2, 3, 4]}, {"features": {}},
    {"repeat": 1}, {"repeat": 0}, {"repeat": 3.0}, {"repeat": 4}, {"repeat": 1, "meta": {"source": "a"}},
    {"repeat": 1, "meta": {}}, {"repeat": 1, "ratio": None}, {"repeat": 1, "ratio": "1"}, {"repeat": 1, "tags": ["a", 1]},
    {"label": "setosa", "probabilities": {"setosa": 1, "versicolor": 0, "virginica": 0}},
    {"label": "rose", "probabilities": {"setosa": 1, "versicolor": 0, "virginica": 0}},
    {"label": "setosa", "probabilities": {"setosa": 1.5, "versicolor": 0, "virginica": 0}},
    {"label": "setosa", "probabilities": {"setosa": 1, "versicolor": 0, "virginica": 0, "rose": 0}},
    {"label": "setosa", "probabilities": {"setosa": 1, "versicolor": 0}},
    {"sum": 1}, {"sum": "1"}, {"size": 1, "fields": {}, "types": {}}, {"size": 1.5, "fields": {}, "types": {}},
]


def _all_schemas() -> list[Any]:
    schemas = []
    for config in (MULTI_CONFIG, ROOT / "examples" / "iris" / "config.json", MNIST_DIR / "config.json"):
        for api in load_config(config).apis:
            schemas += [without_files(api.request_schema), without_files(api.response_schema)]
    return schemas


@pytest.mark.parametrize("schema", _all_schemas())
def test_quick_checks_agree_with_jsonschema(schema: Any) -> None:
    quick = quick_check(schema)
    validator = jsonschema.Draft7Validator(schema)
    if quick is None:
        return
    for instance in _INSTANCES:
        if quick(instance):
            assert validator.is_valid(instance), (schema, instance)
        elif "NaN" not in json.dumps(instance):  # NaN fails every bound here, passes jsonschema's: harmless
            assert not validator.is_valid(instance), (schema, instance)  # valid input takes the quick path


def test_quick_checks_give_up_on_keywords_they_do_not_know() -> None:
    assert quick_check({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}) is None
    assert quick_check({"anyOf": [{"type": "string"}]}) is None
    assert quick_check({"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"}) is None
    assert quick_check({"type": "object", "properties": {"a": {"enum": [1, True]}}}) is None
