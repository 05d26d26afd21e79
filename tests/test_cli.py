"""The `maserve` command as users run it, a real subprocess: config validate, init, predict, serve."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ECHO_DIR, MASERVE_BIN, MNIST_DIR, free_port, mnist_model_present, request, start_server


def maserve(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MASERVE_BIN), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def _model_dir(tmp_path: Path, config: dict, source: Path = ECHO_DIR) -> Path:
    """A copy of a fixture model directory with another config.json."""
    target = tmp_path / "model"
    shutil.copytree(source, target)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _echo_config() -> dict:
    return json.loads((ECHO_DIR / "config.json").read_text())


# -- maserve config validate --------------------------------------------------------------------
def test_validate_accepts_the_bundled_model() -> None:
    for path in (MNIST_DIR, MNIST_DIR / "config.json"):
        result = maserve("config", "validate", path)
        assert result.returncode == 0, result.stdout
        assert result.stdout.splitlines() == [f"{MNIST_DIR / 'config.json'}: valid, 0 errors, 0 warnings"]


def test_validate_prints_every_error_with_its_path_and_fails(tmp_path: Path) -> None:
    config = _echo_config()
    config["apis"][0]["url"] = "echo"
    config["apis"][0]["procotol"] = config["apis"][0].pop("protocol")
    config["model_type"] = "Docker"
    model = _model_dir(tmp_path, config)
    result = maserve("config", "validate", model)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ERROR $.model_type: must be one of Image")
    assert lines[1] == 'WARNING $.apis[0].procotol: ModelArts accepts this typo; write "protocol"'
    assert lines[2] == "ERROR $.apis[0].url: must start with \"/\", got 'echo'"
    assert lines[3] == f"{model / 'config.json'}: invalid, 2 errors, 1 warning"


def test_validate_passes_with_warnings_alone_and_prints_json(tmp_path: Path) -> None:
    config = _echo_config()
    config["apis"][0]["response"]["Content-type"] = "applicaton/json"
    path = _model_dir(tmp_path, config) / "config.json"
    assert maserve("config", "validate", path).returncode == 0
    result = maserve("config", "validate", "--json", path)
    assert result.returncode == 0
    assert json.loads(result.stdout) == [
        {
            "level": "WARNING",
            "path": "$.apis[0].response.Content-type",
            "message": 'ModelArts accepts this typo; write "application/json"',
        }
    ]


def test_validate_reports_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    result = maserve("config", "validate", tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("ERROR $: not readable JSON")
    missing = maserve("config", "validate", "--json", tmp_path / "nowhere.json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)[0]["message"] == "not found"


# -- maserve serve uses the same rules ---------------------------------------------------------
def test_serve_refuses_an_invalid_config_with_the_same_messages(tmp_path: Path) -> None:
    config = _echo_config()
    config["health"]["url"] = "health"
    model = _model_dir(tmp_path, config)
    result = subprocess.run(
        [str(MASERVE_BIN), "serve", str(model), "--port", str(free_port())], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["level"] == "ERROR"
    assert "refusing to start" in record["message"]
    assert "\n  $.health.url: must start with \"/\", got 'health'" in record["message"]


def test_serve_logs_config_warnings(tmp_path: Path) -> None:
    config = _echo_config()
    config["apis"][0]["procotol"] = config["apis"][0].pop("protocol")
    server = start_server(tmp_path, _model_dir(tmp_path, config))
    try:
        found = server.wait_log(lambda r: r.get("level") == "WARNING" and "procotol" in r.get("message", ""))
    finally:
        server.stop()
    assert found, server.logs()
    assert found[0]["message"] == 'config.json $.apis[0].procotol: ModelArts accepts this typo; write "protocol"'


# -- maserve init -------------------------------------------------------------------------------
def test_init_scaffolds_a_model_that_validates_serves_and_predicts(tmp_path: Path) -> None:
    result = maserve("init", "digits", "--dir", tmp_path)
    assert result.returncode == 0, result.stderr
    model = tmp_path / "digits"
    assert sorted(p.name for p in model.iterdir()) == ["README.md", "config.json", "service.py"]
    assert json.loads((model / "config.json").read_text())["model_algorithm"] == "digits"
    assert "maserve serve digits" in (model / "README.md").read_text()
    assert "maserve build digits -t" in (model / "README.md").read_text()

    assert maserve("config", "validate", model).returncode == 0

    predicted = maserve("predict", model, '{"inputs": [1, 2.5]}')
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout) == {"outputs": [2, 5.0]}

    server = start_server(tmp_path, model)
    try:
        conn = server.connect()
        reply = request(conn, "POST", "/", b'{"inputs": [1, 2]}', {"Content-Type": "application/json"})
        conn.close()
    finally:
        server.stop()
    assert (reply.status, reply.json()) == (200, {"outputs": [2, 4]})


def test_init_sanitises_the_algorithm_name_and_refuses_to_overwrite(tmp_path: Path) -> None:
    assert maserve("init", "1st model!", cwd=tmp_path).returncode == 0
    config = json.loads((tmp_path / "1st model!" / "config.json").read_text())
    assert config["model_algorithm"] == "model_1st_model"
    assert maserve("config", "validate", tmp_path / "1st model!").returncode == 0

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "weights.bin").write_bytes(b"keep me")
    refused = maserve("init", "taken", "--dir", tmp_path)
    assert refused.returncode == 1
    assert "already exists and is not empty" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["weights.bin"]
    (tmp_path / "empty").mkdir()
    assert maserve("init", "empty", "--dir", tmp_path).returncode == 0


# -- maserve predict ----------------------------------------------------------------------------
needs_mnist = pytest.mark.skipif(not mnist_model_present(), reason="the MNIST model is not trained here")


@needs_mnist
def test_predict_uploads_a_file_to_the_api_file_field() -> None:
    result = maserve("predict", MNIST_DIR, MNIST_DIR / "samples" / "seven.jpg")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"mnist_result": 7}


@needs_mnist
def test_predict_prints_the_servers_error_reply(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a digit")
    result = maserve("predict", MNIST_DIR, notes)
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["error_code"] == "MASERVE.INVALID_IMAGE"
    assert "'notes.txt' is not an image" in reply["error_msg"]


def test_predict_json_inputs_and_choices(tmp_path: Path) -> None:
    assert maserve("init", "calc", "--dir", tmp_path).returncode == 0
    model = tmp_path / "calc"
    body = tmp_path / "request.json"
    body.write_text('{"inputs": [3]}')
    from_file = maserve("predict", model, body, "--api", "/")
    assert (from_file.returncode, json.loads(from_file.stdout)) == (0, {"outputs": [6]})

    missing = maserve("predict", model, "{}")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error_code"] == "MASERVE.MISSING_FIELD"

    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG")
    no_file_field = maserve("predict", model, image)
    assert no_file_field.returncode == 2
    assert "takes no file" in no_file_field.stderr

    unknown_api = maserve("predict", model, '{"inputs": []}', "--api", "/v2")
    assert unknown_api.returncode == 2
    assert "no api at /v2" in unknown_api.stderr

    not_json = maserve("predict", model, "inputs=1")
    assert not_json.returncode == 2
    assert "neither a file nor JSON" in not_json.stderr


def test_predict_on_a_multipart_api_uploads_files_and_sends_json_as_form_fields(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 10)
    result = maserve("predict", ECHO_DIR, blob)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert (reply["size"], reply["filename"]) == (10, "blob.bin")
    no_file = maserve("predict", ECHO_DIR, '{"sleep": "0"}')
    assert no_file.returncode == 1
    assert json.loads(no_file.stdout)["error_code"] == "MASERVE.MISSING_FIELD"
