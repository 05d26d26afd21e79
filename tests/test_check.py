"""`maserve check` against real processes on 127.0.0.1: the MNIST server (started by the checker and
by the test), a mis-listening stdlib server and a command that never listens."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import MASERVE_BIN, MNIST_DIR, ROOT, Server, free_port, mnist_model_present

pytestmark = pytest.mark.skipif(not mnist_model_present(), reason="examples/mnist/model.onnx is trained separately")
NAMES = ["config", "port", "health", "apis", "websocket", "logs", "metrics", "keepalive", "shutdown"]
NO_CONFIG_NAMES = [n for n in NAMES if n != "websocket"]  # the MNIST example's WebSocket api is unknown


def run_check(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MASERVE_BIN), "check", *args],
        check=False,  # the exit code is what is tested
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "MASERVE_BIN": str(MASERVE_BIN), **(env or {})},
    )


def verdicts(out: subprocess.CompletedProcess[str], names: list[str] = NAMES) -> dict[str, str]:
    report = json.loads(out.stdout)
    assert [r["check"] for r in report["results"]] == names, out.stdout
    return {r["check"]: r["verdict"] for r in report["results"]}


def evidence(out: subprocess.CompletedProcess[str], name: str) -> str:
    return next(r["evidence"] for r in json.loads(out.stdout)["results"] if r["check"] == name)


def port_8080_free() -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", 8080))
        except OSError:
            return False
    return True


def test_the_image_boot_file_passes_every_check() -> None:
    """The real thing, started as the image starts it: every point of the spec PASSes."""
    if not port_8080_free():
        pytest.skip("port 8080 is busy: the checker must start the service on the spec's port")
    env = {"MASERVE_GRACE_SECONDS": "3", "MASERVE_MODEL_DIR": "examples/mnist", "MASERVE_WORKERS": "2"}
    out = run_check("--cmd", "sh image/run.sh", "--grace", "3", "--keepalive-seconds", "3",
                    "--config", "examples/mnist", "--json", env=env)
    if "Address already in use" in out.stdout:
        pytest.skip("another process took port 8080 while the check ran")
    assert verdicts(out) == {name: "PASS" for name in NAMES}, out.stdout + out.stderr
    assert out.returncode == 0
    assert "exited 0" in evidence(out, "shutdown")
    assert "shutdown" in out.stderr  # progress goes to stderr, the report alone to stdout


def test_a_running_service_by_url(mnist_server: Server) -> None:
    out = run_check(f"http://127.0.0.1:{mnist_server.port}", "--config", str(MNIST_DIR),
                    "--port", str(mnist_server.port), "--keepalive-seconds", "2", "--json")
    report = json.loads(out.stdout)
    assert verdicts(out) == {"config": "PASS", "port": "PASS", "health": "PASS", "apis": "PASS",
                             "websocket": "PASS", "logs": "SKIP", "metrics": "PASS", "keepalive": "PASS",
                             "shutdown": "SKIP"}, out.stdout
    assert out.returncode == 0 and report["ok"] is True
    assert set(report["results"][0]) == {"check", "verdict", "evidence", "spec"}
    spec = Path("/work/shared/spec/modelarts-custom-image-spec.txt")
    if spec.is_file():  # every spec quote is made of verbatim fragments of the spec
        text = " ".join(spec.read_text().split())
        for result in report["results"]:
            if result["spec"].startswith("("):  # marked as from ModelArts' other docs, not the spec
                continue
            for fragment in result["spec"].split(" … "):
                assert " ".join(fragment.split()) in text, fragment
    assert "11 sample request(s) answered as expected" in evidence(out, "apis")


def test_the_wrong_port_fails_and_the_table_says_so(mnist_server: Server) -> None:
    out = run_check(f"http://127.0.0.1:{mnist_server.port}", "--config", str(MNIST_DIR), "--keepalive-seconds", "0.5")
    assert out.returncode == 1
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in out.stdout.splitlines()
            if line.count("|") == 2}
    assert rows["port"][0] == "FAIL" and "8080" in rows["port"][1]
    assert rows["health"][0] == "PASS" and rows["shutdown"][0] == "SKIP"
    assert "FAILED: port" in out.stdout


def _model_copy(tmp_path: Path, expected: dict[str, Any] | None) -> Path:
    model = tmp_path / "model"
    (model / "samples").mkdir(parents=True)
    shutil.copy(MNIST_DIR / "config.json", model / "config.json")
    shutil.copy(MNIST_DIR / "samples" / "seven.jpg", model / "samples" / "seven.jpg")
    if expected is not None:
        (model / "samples" / "expected.json").write_text(json.dumps(expected))
    return model


def test_a_wrong_answer_fails_apis_and_missing_samples_warn(mnist_server: Server, tmp_path: Path) -> None:
    url, port = f"http://127.0.0.1:{mnist_server.port}", str(mnist_server.port)
    wrong = _model_copy(tmp_path / "wrong", {"seven.jpg": {"mnist_result": 3}})
    out = run_check(url, "--config", str(wrong), "--port", port, "--keepalive-seconds", "0.5", "--json")
    assert out.returncode == 1 and verdicts(out)["apis"] == "FAIL"
    assert 'answered {"mnist_result": 7}, expected {"mnist_result": 3}' in evidence(out, "apis")
    bare = _model_copy(tmp_path / "bare", None)
    out = run_check(url, "--config", str(bare / "config.json"), "--port", port, "--keepalive-seconds", "0.5", "--json")
    assert out.returncode == 0 and verdicts(out)["apis"] == "WARN"
    assert "no samples" in evidence(out, "apis")


def test_a_loopback_only_server_fails_port_but_is_still_checked(tmp_path: Path) -> None:
    """Listening on 127.0.0.1 is found in /proc/net/tcp; health and shutdown are still judged."""
    port = free_port()
    cmd = f"exec {sys.executable} -m http.server --bind 127.0.0.1 {port}"
    out = run_check("--cmd", cmd, "--cwd", str(tmp_path), "--port", str(port), "--grace", "0",
                    "--keepalive-seconds", "0.5", "--json", timeout=60)
    found = verdicts(out, NO_CONFIG_NAMES)
    assert out.returncode == 1
    assert found["port"] == "FAIL" and f"127.0.0.1:{port}" in evidence(out, "port")
    assert "loopback" in evidence(out, "port")
    assert found["config"] == "SKIP" and found["health"] == "FAIL"  # 404, not {"health": "true"}
    assert found["logs"] == "PASS"  # http.server logs each request (on stderr, captured with stdout)


def test_a_command_that_never_listens_skips_the_http_checks() -> None:
    out = run_check("--cmd", "echo starting; exit 3", "--port", str(free_port()), "--json", timeout=30)
    found = {r["check"]: r["verdict"] for r in json.loads(out.stdout)["results"]}
    assert out.returncode == 1 and found["port"] == "FAIL"
    assert "exited with code 3" in evidence(out, "port") and "starting" in evidence(out, "port")
    # no config given: no websocket row (its apis are unknown)
    assert found == {"config": found["config"], "port": "FAIL", **{n: "SKIP" for n in
                     ["health", "apis", "logs", "metrics", "keepalive", "shutdown"]}}


@pytest.mark.parametrize(
    "args",
    [[], ["http://127.0.0.1:1", "--cmd", "true"], ["http://127.0.0.1:1", "--config", "/nonexistent"],
     ["--cmd", "true", "--bogus"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    out = run_check(*args, timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
