"""ModelArts' config.json rules (maserve.validate): every finding with its level and JSON path."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from helpers import ECHO_DIR, MNIST_DIR
from maserve.validate import ERROR, WARNING, Finding, validate_config


def _mnist() -> dict[str, Any]:
    return json.loads((MNIST_DIR / "config.json").read_text())


def _findings(raw: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f.level, f.path) for f in validate_config(raw)]


# The custom image sample from ModelArts' documentation, typos included (abridged).
PLATFORM_SAMPLE: dict[str, Any] = {
    "model_algorithm": "image_classification",
    "model_type": "Image",
    "metrics": {"f1": 0.345294, "accuracy": 0.462963, "precision": 0.338977, "recall": 0.351852},
    "apis": [
        {
            "procotol": "http",
            "url": "/",
            "method": "post",
            "request": {
                "Content-type": "multipart/form-data",
                "data": {"type": "object", "properties": {"images": {"type": "file"}}},
            },
            "response": {
                "Content-type": "applicaton/json",
                "data": {
                    "type": "object",
                    "properties": {"mnist_result": {"type": "array", "item": [{"type": "string"}]}},
                },
            },
        }
    ],
    "health": {"url": "/health", "protocol": "http", "initial_delay_seconds": "12", "timeout_seconds": "12"},
}


def test_bundled_configs_are_clean() -> None:
    assert validate_config(_mnist()) == []
    assert validate_config(json.loads((ECHO_DIR / "config.json").read_text())) == []


def test_platform_sample_typos_are_warnings_with_the_fix() -> None:
    findings = validate_config(json.loads(json.dumps(PLATFORM_SAMPLE)))
    assert findings == [
        Finding(WARNING, "$.apis[0].procotol", 'ModelArts accepts this typo; write "protocol"'),
        Finding(WARNING, "$.apis[0].response.Content-type", 'ModelArts accepts this typo; write "application/json"'),
        Finding(
            WARNING,
            "$.apis[0].response.data.properties.mnist_result.item",
            'ModelArts accepts this typo; write "items"',
        ),
    ]
    assert str(findings[0]) == 'WARNING $.apis[0].procotol: ModelArts accepts this typo; write "protocol"'


def _set(*keys: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        target = raw
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _drop(*keys: str | int) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        target = raw
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


REQUEST_DATA = ("apis", 0, "request", "data")


@pytest.mark.parametrize(
    "change, path, message",
    [
        (_drop("model_algorithm"), "$.model_algorithm", "required"),
        (_set("model_algorithm", value=7), "$.model_algorithm", "must be a string"),
        (_set("model_algorithm", value="1abc"), "$.model_algorithm", "must start with a letter"),
        (_set("model_algorithm", value="a" * 37), "$.model_algorithm", "at most 36 characters, got 37"),
        (_set("model_algorithm", value="bad=name"), "$.model_algorithm", "must not contain ="),
        (_drop("model_type"), "$.model_type", "required"),
        (_set("model_type", value="image"), "$.model_type", 'write "Image"'),
        (_set("model_type", value="Keras"), "$.model_type", "must be one of Image, TensorFlow"),
        (_set("runtime", value="python3.6"), "$.runtime", "must not be set when model_type is Image"),
        (_set("metrics", "accuracy", value=1.5), "$.metrics.accuracy", "between 0 and 1"),
        (_set("metrics", "f1", value="high"), "$.metrics.f1", "must be a number"),
        (_set("metrics", "loss", value=True), "$.metrics.loss", "must be a number"),
        (_set("apis", value={}), "$.apis", "must be an array"),
        (_set("apis", 0, "protocol", value="ftp"), "$.apis[0].protocol", "must be http, https, ws or wss"),
        (_set("apis", 0, "url", value="predict"), "$.apis[0].url", 'must start with "/"'),
        (_set("apis", 0, "method", value="send"), "$.apis[0].method", "must be one of get, post"),
        (_set("apis", 0, "request", value="multipart"), "$.apis[0].request", "must be an object"),
        (_set("apis", 0, "request", "Content-type", value="text/plain"), "$.apis[0].request.Content-type", "must be"),
        (
            _set("apis", 0, "response", "data", "properties", "image", value={"type": "file"}),
            "$.apis[0].response.data.properties.image.type",
            "not in a response",
        ),
        (
            _set(*REQUEST_DATA, "properties", "meta", value={"type": "object", "properties": {"f": {"type": "file"}}}),
            "$.apis[0].request.data.properties.meta.properties.f.type",
            "must be a top-level property",
        ),
        (
            _set(*REQUEST_DATA, "properties", "count", value={"type": "integr"}),
            "$.apis[0].request.data.properties.count.type",
            "not a valid JSON Schema",
        ),
        (_set(*REQUEST_DATA, "required", value="images"), "$.apis[0].request.data.required", "not a valid JSON Schema"),
        (_set(*REQUEST_DATA, value=[]), "$.apis[0].request.data", "must be a JSON Schema object"),
        (lambda c: c["apis"].insert(1, dict(c["apis"][0], method="POST")), "$.apis[1]", "two apis entries declare POST /"),
        (_set("health", value="/health"), "$.health", "must be an object"),
        (_drop("health", "url"), "$.health.url", "required"),
        (_set("health", "url", value="health"), "$.health.url", 'must start with "/"'),
        (_set("health", "protocol", value="tcp"), "$.health.protocol", "must be http or https"),
        (_set("health", "timeout_seconds", value="5s"), "$.health.timeout_seconds", "must be an integer"),
        (_set("health", "period_seconds", value=2.5), "$.health.period_seconds", "must be an integer"),
        (_set("health", "failure_threshold", value=0), "$.health.failure_threshold", "at least 1"),
        (_set("health", "check_method", value="TCP"), "$.health.check_method", "must be HTTP or EXEC"),
        (_set("health", "check_method", value="EXEC"), "$.health.command", "required when check_method is EXEC"),
        (_set("dependencies", value={"pip": ["numpy"]}), "$.dependencies", "must be an array"),
        (
            _set("dependencies", value=[{"installer": "conda", "packages": []}]),
            "$.dependencies[0].installer",
            'must be "pip"',
        ),
        (
            _set("dependencies", value=[{"installer": "pip", "packages": [{"package_version": "1", "restraint": "EXACT"}]}]),
            "$.dependencies[0].packages[0].package_name",
            "required",
        ),
        (
            _set("dependencies", value=[{"installer": "pip", "packages": [{"package_name": "a", "restraint": "AN"}]}]),
            "$.dependencies[0].packages[0].restraint",
            "must be EXACT, ATLEAST or ATMOST",
        ),
    ],
)
def test_each_rule_reports_an_error_at_its_path(
    change: Callable[[dict[str, Any]], None], path: str, message: str
) -> None:
    raw = _mnist()
    change(raw)
    errors = [f for f in validate_config(raw) if f.level == ERROR]
    assert [f.path for f in errors] == [path], errors
    assert message in errors[0].message


def test_every_problem_is_reported_at_once() -> None:
    raw = _mnist()
    raw["model_algorithm"] = "9<"
    raw["apis"][0]["url"] = "x"
    raw["health"]["timeout_seconds"] = "soon"
    assert _findings(raw) == [
        (ERROR, "$.model_algorithm"),
        (ERROR, "$.model_algorithm"),
        (ERROR, "$.apis[0].url"),
        (ERROR, "$.health.timeout_seconds"),
    ]


@pytest.mark.parametrize(
    "change",
    [
        _set("health", "failure_threshold", value="12"),  # ModelArts' samples write numbers as strings
        _set("health", "initial_delay_seconds", value=0),
        _set("health", "check_method", value="EXEC"),
        _set("apis", 0, "method", value="PoSt"),
        _set("apis", 0, "protocol", value="https"),
        _set("apis", 0, "request", "Content-type", value=" Multipart/Form-Data "),
        _set(*REQUEST_DATA, "properties", "note", value={"type": ["file", "null"]}),
        _drop("apis", 0, "request", "data"),
        _drop("apis", 0, "url"),
        _drop("health"),
    ],
)
def test_what_modelarts_accepts_passes(change: Callable[[dict[str, Any]], None]) -> None:
    raw = _mnist()
    change(raw)
    if raw.get("health", {}).get("check_method") == "EXEC":
        raw["health"]["command"] = "cat /tmp/ready"
    assert validate_config(raw) == []


def test_warnings_that_are_not_typos() -> None:
    raw = _mnist()
    raw["metrics"]["accuracy"] = "0.99"
    raw["dependencies"] = [{"installer": "pip", "packages": [{"package_name": "numpy", "restraint": "ATLEAST"}]}]
    raw["apis"][0]["response"]["Content-Type"] = "application/json"
    findings = validate_config(raw)
    assert [(f.level, f.path) for f in findings] == [
        (WARNING, "$.metrics.accuracy"),
        (WARNING, "$.apis[0].response['Content-Type']"),
        (WARNING, "$.dependencies"),
    ]
    assert "does not install them into a custom image: `maserve build` does" in findings[2].message


def test_a_typo_next_to_the_right_key_still_warns() -> None:
    raw = _mnist()
    raw["apis"][0]["procotol"] = "https"
    (finding,) = validate_config(raw)
    assert (finding.level, finding.path) == (WARNING, "$.apis[0].procotol")
    assert "the value of 'protocol' wins" in finding.message


def test_what_the_platforms_own_templates_write_is_a_warning_not_an_error() -> None:
    """Blank `restraint` and `package_version` (the official template), a pass-through response
    Content-type, a file field in a JSON request: ModelArts accepts all three, so maserve warns."""
    raw = _mnist()
    raw["dependencies"] = [{"installer": "pip", "packages": [
        {"package_name": "numpy", "package_version": "", "restraint": ""},
        {"package_name": "six", "package_version": "1.16.0", "restraint": ""}]}]
    raw["apis"][0]["response"]["Content-type"] = "multipart/json"
    raw["apis"][0]["request"]["Content-type"] = "application/json"
    findings = {f.path: f for f in validate_config(raw)}
    assert all(f.level == WARNING for f in findings.values()), findings
    assert "latest release is installed" in findings["$.dependencies[0].packages[0].package_version"].message
    assert "taken as EXACT" in findings["$.dependencies[0].packages[1].restraint"].message
    assert "passed through by ModelArts" in findings["$.apis[0].response.Content-type"].message
    assert "only a value" in findings["$.apis[0].request.data.properties.images.type"].message
    raw["apis"][0]["request"]["Content-type"] = "text/plain"  # a request type still is an error
    assert [f.path for f in validate_config(raw) if f.level == ERROR] == ["$.apis[0].request.Content-type"]
