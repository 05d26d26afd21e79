"""ModelArts' published config.json examples (tests/modelarts_examples/, verbatim): `maserve config
validate` accepts each with the warnings it should give and no error, since the platform accepts
them; a real server started on each serves its documented exchange with response validation on;
and `maserve batch mapping-rule` prints the documented rule for the documented batch example."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import FIXTURE_MODELS, MASERVE_BIN, post_image, request, start_server

EXAMPLES = Path(__file__).resolve().parent / "modelarts_examples"
TYPO_PROTOCOL = ('$.apis[0].procotol', 'ModelArts accepts this typo; write "protocol"')
TYPO_CONTENT_TYPE = ('$.apis[0].response.Content-type', 'ModelArts accepts this typo; write "application/json"')
TYPO_ITEM = ('$.apis[0].response.data.properties.mnist_result.item', 'ModelArts accepts this typo; write "items"')
DEPENDENCIES = ('$.dependencies', 'ModelArts does not install them into a custom image: `maserve build` does')
BLANK_VERSION = ('$.dependencies[0].packages[1].package_version',
                 'blank: the latest release is installed; pin a version for a repeatable image')
# Each example and the warnings it must give (path, message), in order.
EXPECTED_WARNINGS: dict[str, list[tuple[str, str]]] = {
    "apis_code_example.apis.json": [TYPO_CONTENT_TYPE, TYPO_ITEM],
    "object_detection.json": [DEPENDENCIES],
    "image_classification.json": [DEPENDENCIES, BLANK_VERSION],
    "predict_analysis.json": [DEPENDENCIES],
    "custom_image.json": [],
    "xgboost_iris.json": [TYPO_CONTENT_TYPE],
    "custom_dependency_package.json": [TYPO_PROTOCOL, TYPO_CONTENT_TYPE, TYPO_ITEM, DEPENDENCIES],
    "batch_mapping_example.apis.json": [],
    "custom_image_several_paths.apis.json": [],
}


def example_config(name: str) -> dict:
    """The example as a whole config.json: an `apis`-only snippet goes into a minimal Image config."""
    value = json.loads((EXAMPLES / name).read_text())
    if name.endswith(".apis.json"):
        return {"model_algorithm": "image_classification", "model_type": "Image", "apis": value}
    return value


def test_every_published_example_is_listed() -> None:
    configs = {p.name for p in EXAMPLES.glob("*.json") if p.name.count(".") == 1 or p.name.endswith(".apis.json")}
    assert configs == set(EXPECTED_WARNINGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_WARNINGS))
def test_validate_accepts_the_published_example_with_warnings_only(tmp_path: Path, name: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(example_config(name)))
    done = subprocess.run([str(MASERVE_BIN), "config", "validate", "--json", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    findings = json.loads(done.stdout)
    assert [f for f in findings if f["level"] != "WARNING"] == []
    assert [(f["path"], f["message"]) for f in findings] == EXPECTED_WARNINGS[name]


def model_dir(tmp_path: Path, config: dict, answer: str, expected_request: str | None = None) -> Path:
    target = tmp_path / "model"
    shutil.copytree(FIXTURE_MODELS / "doc_examples", target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "config.json").write_text(json.dumps(config))
    shutil.copy(EXAMPLES / answer, target / "answer.json")
    if expected_request:
        shutil.copy(EXAMPLES / expected_request, target / "expected_request.json")
    return target


UPLOAD_EXAMPLES = [("object_detection.json", "object_detection.response.json"),
                   ("image_classification.json", "image_classification.response.json"),
                   ("custom_image.json", "image_classification.response.json")]
JSON_EXAMPLES = [("predict_analysis.json", "predict_analysis.request.json", "predict_analysis.response.json"),
                 ("xgboost_iris.json", "xgboost_iris.request.json", "xgboost_iris.response.json")]


@pytest.mark.parametrize(("config", "answer"), UPLOAD_EXAMPLES)
def test_an_upload_example_serves_its_documented_answer(tmp_path: Path, config: str, answer: str) -> None:
    directory = model_dir(tmp_path, example_config(config), answer)
    server = start_server(tmp_path, directory, env={"MASERVE_VALIDATE_RESPONSES": "1", "MASERVE_WORKERS": "1"})
    try:
        conn = server.connect()
        reply = post_image(conn, b"\xff\xd8 stand-in image bytes", filename="flower.jpg")
        conn.close()
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert reply.json() == json.loads((EXAMPLES / answer).read_text())


@pytest.mark.parametrize(("config", "request_file", "answer"), JSON_EXAMPLES)
def test_a_json_example_takes_its_documented_request(tmp_path: Path, config: str, request_file: str,
                                                     answer: str) -> None:
    directory = model_dir(tmp_path, example_config(config), answer, request_file)
    server = start_server(tmp_path, directory, env={"MASERVE_VALIDATE_RESPONSES": "1", "MASERVE_WORKERS": "1"})
    try:
        conn = server.connect()
        documented = (EXAMPLES / request_file).read_bytes()
        reply = request(conn, "POST", "/", documented, {"Content-Type": "application/json"})
        other = request(conn, "POST", "/", b'{"req_data": []}', {"Content-Type": "application/json"})
        conn.close()
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert reply.json() == json.loads((EXAMPLES / answer).read_text())
    assert other.status != 200  # the fixture answers only the documented request: this test can fail


def test_the_mapping_rule_template_is_the_documented_rule(tmp_path: Path) -> None:
    """The console "automatically resolves the mapping relationship from the configuration file";
    `maserve batch mapping-rule` must print that same rule for the documented apis."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(example_config("batch_mapping_example.apis.json")))
    printed = subprocess.run([str(MASERVE_BIN), "batch", "mapping-rule", str(directory)], capture_output=True,
                             text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == json.loads((EXAMPLES / "batch_mapping_example.mapping_rule.json").read_text())
