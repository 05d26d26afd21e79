"""ModelArts customize_service.py scripts served unchanged (maserve.compat + the model_service shim).

Every test runs a real server through image/run.sh on a copy of a fixture model directory, so the
model files each test needs (and the ones it must not have) are laid out per test.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ECHO_DIR, FIXTURE_MODELS, MNIST_DIR, Server, mnist_model_present, multipart, post_image, request, start_server

JSON_HEADERS = {"Content-Type": "application/json"}


def model_dir(tmp_path: Path, fixture: str, name: str = "my_model", extra: dict[str, bytes] | None = None) -> Path:
    """Copy tests/models/<fixture> to tmp_path/<name> and add `extra` files (name → bytes)."""
    target = tmp_path / name
    shutil.copytree(FIXTURE_MODELS / fixture, target, ignore=shutil.ignore_patterns("__pycache__"))
    for file_name, data in (extra or {}).items():
        (target / file_name).write_bytes(data)
    return target


def post_json(server: Server, path: str, value: object) -> tuple[int, dict]:
    conn = server.connect()
    try:
        reply = request(conn, "POST", path, json.dumps(value).encode(), JSON_HEADERS)
    finally:
        conn.close()
    return reply.status, reply.json()


def failed_start_logs(tmp_path: Path, directory: Path) -> str:
    """Start a server that must refuse to start; return its output once it has exited non-zero."""
    server = start_server(tmp_path, directory, wait=False)
    try:
        code = server.proc.wait(timeout=30)
        assert code != 0, server.logs()
        return server.logs()
    finally:
        server.kill_group()


@pytest.mark.skipif(not mnist_model_present(), reason="examples/mnist/model.onnx is trained separately")
def test_platform_style_pytorch_script_reads_the_mnist_samples(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "compat_mnist")
    for name in ("model.onnx", "preprocess.py"):
        shutil.copy(MNIST_DIR / name, directory / name)
    assert not (directory / "service.py").exists()
    expected = json.loads((MNIST_DIR / "samples" / "expected.json").read_text())
    server = start_server(tmp_path, directory)
    try:
        conn = server.connect()
        for sample, answer in expected.items():  # file → the full expected JSON answer
            reply = post_image(conn, (MNIST_DIR / "samples" / sample).read_bytes(), filename=sample)
            assert reply.status == 200, (sample, reply.status, reply.body)
            assert reply.json() == answer, sample
        conn.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sum_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    tmp_path = tmp_path_factory.mktemp("compat_sum")
    server = start_server(tmp_path, model_dir(tmp_path, "compat_sum", name="adder"))
    yield server
    server.stop()


def test_json_body_reaches_preprocess_and_postprocess_is_the_answer(sum_server: Server) -> None:
    body = {"numbers": [1, 2, 3.5], "note": "hello", "nested": {"a": [True, None]}}
    status, answer = post_json(sum_server, "/sum", body)
    assert status == 200, answer
    assert answer == {
        "sum": 6.5,
        "body": body,
        "model_name": "adder",  # the model directory's name
        "model_path": "adder",  # TfServingBaseService: the directory itself
        "model_path_is_dir": True,
    }


def test_value_error_in_preprocess_is_400_with_its_message_then_the_next_request_succeeds(sum_server: Server) -> None:
    conn = sum_server.connect()
    try:
        bad = request(conn, "POST", "/sum", json.dumps({"numbers": [1, "two"]}).encode(), JSON_HEADERS)
        assert bad.status == 400, bad.body
        assert bad.json() == {"error_code": "MASERVE.INVALID_INPUT", "error_msg": "'numbers' must be a list of numbers"}
        missing = request(conn, "POST", "/sum", json.dumps({"values": [1]}).encode(), JSON_HEADERS)
        assert missing.status == 400, missing.body
        assert "'numbers'" in missing.json()["error_msg"]  # KeyError: the missing key is named
        good = request(conn, "POST", "/sum", json.dumps({"numbers": [40, 2]}).encode(), JSON_HEADERS)  # same connection
        assert good.status == 200 and good.json()["sum"] == 42, good.body
    finally:
        conn.close()


def test_errors_after_preprocess_are_the_scripts_defect_500(sum_server: Server) -> None:
    status, answer = post_json(sum_server, "/sum", {"numbers": [1], "fail": True})
    assert status == 500 and answer["error_code"] == "MASERVE.MODEL_ERROR", answer
    assert post_json(sum_server, "/sum", {"numbers": [1]})[0] == 200


def test_multipart_data_is_a_dict_of_file_objects_per_field_and_pt_model_path_is_the_file(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "compat_files", extra={"weights.pth": b"w1", "labels.txt": b"not a model"})
    server = start_server(tmp_path, directory)
    try:
        body, ctype = multipart([("images", "seven.jpg", b"\xff\xd8jpeg"), ("masks", "m.bin", b"12345")], {"note": "hi"})
        conn = server.connect()
        reply = request(conn, "POST", "/", body, {"Content-Type": ctype})
        conn.close()
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert reply.json() == {
        "data": {
            "images": {"seven.jpg": {"size": 6, "name": "seven.jpg", "type": "BytesIO"}},
            "masks": {"m.bin": {"size": 5, "name": "m.bin", "type": "BytesIO"}},
            "note": {"value": "hi", "type": "str"},
        },
        "model_name": "my_model",
        "model_path": "weights.pth",  # PTServingBaseService: the model file
        "model_path_is_file": True,
        "weights": "w1",
    }


def test_sklearn_script_gets_its_model_file(tmp_path: Path) -> None:
    model = pickle.dumps({"weights": [2.0, -1.0], "bias": 0.5})
    server = start_server(tmp_path, model_dir(tmp_path, "compat_sklearn", extra={"model.pkl": model}))
    try:
        status, answer = post_json(server, "/", {"req_data": [[1, 2], [3, 4]]})
        assert (status, answer) == (200, {"resp_data": [0.5, 2.5], "model_path": "model.pkl"})
        status, answer = post_json(server, "/", {"req_data": [["x", 1]]})  # float("x"): ValueError
        assert status == 400 and "could not convert string to float" in answer["error_msg"], answer
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no model file (*.pt, *.pth, *.onnx) for DescribeService, a PTServingBaseService"),
        ({"a.pt": b"1", "b.onnx": b"2"}, "several model files (a.pt, b.onnx) for DescribeService, a PTServingBaseService"),
    ],
)
def test_a_file_based_base_without_exactly_one_model_file_refuses_to_start(
    tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    logs = failed_start_logs(tmp_path, model_dir(tmp_path, "compat_files", extra=files))
    assert message in logs, logs


def test_a_directory_without_either_script_names_both(tmp_path: Path) -> None:
    directory = tmp_path / "empty_model"
    directory.mkdir()
    shutil.copy(ECHO_DIR / "config.json", directory / "config.json")
    logs = failed_start_logs(tmp_path, directory)
    assert "service.py" in logs and "customize_service.py" in logs, logs


def test_a_script_with_two_service_classes_refuses_to_start(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "compat_sum")
    script = directory / "customize_service.py"
    script.write_text(script.read_text() + "\n\nclass OtherService(TfServingBaseService):\n    pass\n")
    logs = failed_start_logs(tmp_path, directory)
    assert "expected exactly one class deriving from a model_service base class" in logs, logs
    assert "SumService, OtherService" in logs, logs


def test_a_script_that_leaves_inference_to_the_platform_refuses_to_start(tmp_path: Path) -> None:
    """SingleNodeService runs no model; TensorFlow's default needs its SavedModel, PyTorch's a model
    file torch can load: each refuses to start, saying why."""
    directory = model_dir(tmp_path, "compat_sum")
    (directory / "customize_service.py").write_text(
        "from model_service.model_service import SingleNodeService\n\n\n"
        "class PlainService(SingleNodeService):\n"
        "    def _preprocess(self, data):\n"
        "        return data\n"
    )
    logs = failed_start_logs(tmp_path, directory)
    assert "PlainService must override _inference" in logs, logs
    directory = model_dir(tmp_path, "compat_sum", name="torch_model", extra={"model.pt": b"not weights"})
    (directory / "customize_service.py").write_text(
        "from model_service.pytorch_model_service import PTServingBaseService\n\n\n"
        "class TorchService(PTServingBaseService):\n"
        "    def _preprocess(self, data):\n"
        "        return data\n"
    )
    logs = failed_start_logs(tmp_path, directory)
    assert "install torch" in logs or "model.pt" in logs or "pickle" in logs.lower(), logs
    directory = model_dir(tmp_path, "compat_sum", name="tf_model")
    (directory / "customize_service.py").write_text(
        "from model_service.tfserving_model_service import TfServingBaseService\n\n\n"
        "class SavedModelService(TfServingBaseService):\n"
        "    def _preprocess(self, data):\n"
        "        return data\n"
    )
    logs = failed_start_logs(tmp_path, directory)
    assert "no saved_model.pb for the default _inference of TfServingBaseService" in logs, logs


def test_service_py_wins_over_customize_service_py(tmp_path: Path) -> None:
    directory = tmp_path / "both"
    shutil.copytree(ECHO_DIR, directory, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "customize_service.py").write_text("raise RuntimeError('customize_service.py must not be imported')\n")
    server = start_server(tmp_path, directory)
    try:
        body, ctype = multipart([("file", "blob.bin", b"abc")])
        conn = server.connect()
        reply = request(conn, "POST", "/echo", body, {"Content-Type": ctype})
        conn.close()
        assert reply.status == 200 and reply.json()["size"] == 3, reply.body
    finally:
        server.stop()


def test_the_platforms_helper_modules_log_and_metrics(tmp_path: Path) -> None:
    """`import log`, `from model_service import log`, `import model_service.log as log` and
    `from metric.metrics_manager import MetricsManager` work; the script's INFO lines reach stdout."""
    server = start_server(tmp_path, model_dir(tmp_path, "compat_helpers", name="helped"), env={"MASERVE_WORKERS": "1"})
    try:
        first = post_json(server, "/sum", {"numbers": [1, 2, 3]})
        second = post_json(server, "/sum", {"numbers": [4]})
        lines = server.wait_log(lambda r: r.get("message") == "answering 4")
    finally:
        server.stop()
    assert first == (200, {"sum": 6, "updates": 1})
    assert second == (200, {"sum": 4, "updates": 2})  # recorded per worker, one worker here
    assert lines and lines[0]["level"] == "INFO" and lines[0]["logger"] == "customize_service"
    messages = {(r.get("logger"), r.get("message")) for r in server.log_records()}
    assert ("helpers.pre", "preprocess got 3 numbers") in messages
    assert ("helpers.infer", "inference done") in messages


def test_a_config_written_like_the_platforms_template_is_served(tmp_path: Path) -> None:
    """Blank restraint/package_version, the samples' typos, a pass-through response Content-type and
    a file field in a JSON request: `config validate` passes with warnings, the service starts
    (logging them) and answers; `maserve build` installs the blank-version package unpinned."""
    from helpers import MASERVE_BIN

    from maserve.build import model_requirements

    directory = model_dir(tmp_path, "compat_template")
    validate = subprocess.run([str(MASERVE_BIN), "config", "validate", str(directory)], capture_output=True,
                              text=True, timeout=60, check=False)
    assert validate.returncode == 0, validate.stdout
    assert "valid, 0 errors" in validate.stdout and "latest release is installed" in validate.stdout
    assert model_requirements(directory, json.loads((directory / "config.json").read_text())) == [
        "numpy", "six==1.16.0"]
    server = start_server(tmp_path, directory)
    try:
        status, answer = post_json(server, "/", {"images": "cat.jpg", "threshold": 0.25})
        warned = server.wait_log(lambda r: r.get("level") == "WARNING" and "passed through" in r.get("message", ""))
        check = subprocess.run([str(MASERVE_BIN), "check", f"http://127.0.0.1:{server.port}", "--port",
                                str(server.port), "--config", str(directory), "--json"], capture_output=True,
                               text=True, timeout=120, check=False)
    finally:
        server.stop()
    assert (status, answer) == (200, {"predicted_label": "cat.jpg", "scores": [0.25, 0.75]})
    assert warned, "the start-up did not log the config.json warnings"
    verdicts = {r["check"]: (r["verdict"], r["evidence"]) for r in json.loads(check.stdout)["results"]}
    assert verdicts["apis"][0] == "PASS", verdicts  # application/json answers a pass-through declared type
    assert verdicts["config"][0] == "WARN", verdicts


def test_no_apis_declared_serves_post_slash_with_multipart_or_json(tmp_path: Path) -> None:
    """As the built-in runtimes do: POST / takes an upload or a JSON body and hands it to the
    script; the start-up log says why; a non-ASCII answer goes out as UTF-8 characters."""
    server = start_server(tmp_path, model_dir(tmp_path, "compat_noapis"))
    try:
        conn = server.connect()
        body, ctype = multipart([("images", "cat.jpg", b"\xff\xd8 not really a jpeg")], {"note": "hi"})
        upload = request(conn, "POST", "/", body, {"Content-Type": ctype})
        as_json = request(conn, "POST", "/", json.dumps({"x": [1, 2]}).encode(), JSON_HEADERS)
        broken = request(conn, "POST", "/", b"{not json", JSON_HEADERS)
        elsewhere = request(conn, "POST", "/predict", b"{}", JSON_HEADERS)
        conn.close()
        warned = server.wait_log(lambda r: r.get("level") == "WARNING" and "none declared" in r.get("message", ""))
    finally:
        server.stop()
    assert upload.status == 200, upload.body
    assert upload.json() == {"got": {"images": {"cat.jpg": 20}, "note": "hi"}, "label": "猫"}
    assert "猫".encode() in upload.body and b"\\u" not in upload.body
    assert as_json.status == 200 and as_json.json() == {"got": {"x": [1, 2]}, "label": "猫"}
    assert broken.status == 400 and broken.json()["error_code"] == "MASERVE.MALFORMED_REQUEST"
    assert elsewhere.status == 404
    assert warned


def test_xgskl_conventions_and_its_default_inference(tmp_path: Path) -> None:
    """XgSklServingBaseService as that runtime runs it: a `.m` model file, the one-argument
    constructor, the JSON body as text, and no `_inference` (the base loads the file and calls
    `predict`, the answer as lists); MASERVE_COMPAT_RESP_DATA=1 wraps it in data.resp_data."""
    import sys

    sys.path.insert(0, str(FIXTURE_MODELS / "compat_xgskl"))
    try:
        from tiny_model import RowSums

        model = pickle.dumps(RowSums(2.0))
    finally:
        sys.path.pop(0)
        sys.modules.pop("tiny_model", None)
    directory = model_dir(tmp_path, "compat_xgskl", extra={"model.m": model})
    expected = {"first": 6.0, "all": [6.0, 14.0], "body_was_text": True, "model": "model.m"}
    for wrap, answer in (("", expected), ("1", {"data": {"resp_data": expected}})):
        server = start_server(tmp_path, directory, env={"MASERVE_COMPAT_RESP_DATA": wrap})
        try:
            assert post_json(server, "/", {"rows": [[1, 2], [3, 4]]}) == (200, answer)
        finally:
            server.stop()


def test_what_scripts_rely_on_besides_the_pipeline(tmp_path: Path) -> None:
    """A sibling module, a file opened relative to the model directory, getvalue() on an upload,
    the script's own inference() with another _preprocess signature, no _postprocess."""
    server = start_server(tmp_path, model_dir(tmp_path, "compat_conventions"))
    try:
        conn = server.connect()
        body, ctype = multipart([("images", "a.png", b"12345678")])
        reply = request(conn, "POST", "/", body, {"Content-Type": ctype})
        conn.close()
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert reply.json() == {"size": 8, "tag": "tagged", "labels": ["cat", "dog"], "prefix": "from a sibling module",
                            "cwd_is_model_dir": True}
