"""`maserve check --image` against real images run by podman or docker: the MNIST image (every check
PASS, batch-deps WARN) and a bad image (wrong CMD, files its user may write, a private key in /home).

They need an engine that can run containers (docker with a daemon, or podman; on machines like
ours podman needs `. image/podman-env.sh` first) and are skipped with the reason otherwise; CI runs
them (.ci/run installs podman and its image stage builds the image first). The MNIST image is
MASERVE_TEST_IMAGE (default maserve-mnist:check); when it is missing it is built with
`maserve build --offline` from MASERVE_TEST_BASE (default localhost/debian-python:bookworm, made by
`maserve base-image`), which takes a minute or two.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import MASERVE_BIN, ROOT, mnist_model_present

from maserve.check.image import default_engine, engine_works

IMAGE = os.environ.get("MASERVE_TEST_IMAGE", "maserve-mnist:check")
BASE = os.environ.get("MASERVE_TEST_BASE", "localhost/debian-python:bookworm")
NAMES = ["config", "port", "health", "apis", "websocket", "logs", "metrics", "keepalive", "shutdown",
         "boot", "size", "user", "batch-deps", "secrets"]


@pytest.fixture(scope="module")
def engine() -> str:
    name = os.environ.get("MASERVE_TEST_ENGINE") or default_engine()
    if not engine_works(name):
        pytest.skip(f"no container engine works here (`{name} info` failed; for podman on these machines "
                    "source image/podman-env.sh first)")
    return name


def _exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "exists" if engine == "podman" else "inspect", image],
                          capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def mnist_image(engine: str) -> str:
    if _exists(engine, IMAGE):
        return IMAGE
    if not mnist_model_present():
        pytest.skip("examples/mnist/model.onnx is trained separately")
    if not _exists(engine, BASE):
        pytest.skip(f"neither {IMAGE} nor the base {BASE} exists (`maserve base-image` makes the base)")
    subprocess.run([str(MASERVE_BIN), "build", "examples/mnist", "--offline", "--engine", engine,
                    "--base-image", BASE, "--tag", IMAGE], check=True, cwd=ROOT, timeout=900)
    return IMAGE


def run_check(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = subprocess.run([str(MASERVE_BIN), "check", *args, "--json"], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, check=False)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out, report


def _containers(engine: str) -> str:
    return subprocess.run([engine, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                          check=False).stdout


def test_mnist_image_passes(engine: str, mnist_image: str) -> None:
    out, report = run_check("--image", mnist_image, "--engine", engine, "--config", "examples/mnist",
                            "--grace", "5", "--env", "MASERVE_GRACE_SECONDS=5", "--keepalive-seconds", "3")
    shown = json.dumps(report, indent=1) + out.stderr[-2000:]
    assert [r["check"] for r in report["results"]] == NAMES, shown
    verdicts = {r["check"]: r["verdict"] for r in report["results"]}
    evidence = {r["check"]: r["evidence"] for r in report["results"]}
    assert verdicts.pop("batch-deps") == "WARN", shown  # the real-time image has no JRE or zip
    assert "java" in evidence["batch-deps"] and "zip" in evidence["batch-deps"], shown
    assert "python" not in evidence["batch-deps"].split("(")[0], shown
    assert all(v == "PASS" for v in verdicts.values()), shown
    assert "1000" in evidence["user"], shown
    # The model and the code are read-only to ma-user: it writes to its home and /tmp only.
    assert "may write only to /home/ma-user, /tmp, /var/tmp" in evidence["user"], shown
    assert report["ok"] is True and out.returncode == 0, shown
    assert "maserve-check-" not in _containers(engine), "the checker left a container behind"


BAD_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
USER root
RUN (getent passwd 1000 >/dev/null || useradd -u 1000 app) && mkdir -p /srv/app/data && chown -R 1000 /srv/app
COPY id_rsa /home/deploy/id_rsa
ENV AWS_SECRET_ACCESS_KEY=not-a-real-one
USER 1000
WORKDIR /
CMD ["python3", "-m", "http.server", "8080"]
"""
FAKE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAnotarealkeyjustfortests\n-----END RSA PRIVATE KEY-----\n"


def test_bad_image_is_flagged(engine: str, mnist_image: str, tmp_path: Path) -> None:
    base = BASE if _exists(engine, BASE) else mnist_image  # both have python3
    (tmp_path / "Dockerfile").write_text(BAD_DOCKERFILE)
    (tmp_path / "id_rsa").write_text(FAKE_KEY)
    tag = "maserve-check-bad:test"
    subprocess.run([engine, "build", "--build-arg", f"BASE={base}", "-t", tag, str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    try:
        out, report = run_check("--image", tag, "--engine", engine, "--grace", "0", "--stop-bound", "5",
                                "--keepalive-seconds", "1")
    finally:
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, check=False)
    shown = json.dumps(report, indent=1) + out.stderr[-2000:]
    assert [r["check"] for r in report["results"]] == [n for n in NAMES if n != "websocket"], shown  # no config
    verdicts = {r["check"]: r["verdict"] for r in report["results"]}
    evidence = {r["check"]: r["evidence"] for r in report["results"]}
    assert verdicts["boot"] == "FAIL" and "python3" in evidence["boot"], shown
    assert verdicts["user"] == "WARN" and "/srv/app, /srv/app/data" in evidence["user"], shown
    assert verdicts["secrets"] == "WARN", shown
    assert "/home/deploy/id_rsa" in evidence["secrets"] and "AWS_SECRET_ACCESS_KEY" in evidence["secrets"], shown
    assert "not-a-real-one" not in out.stdout, "a secret's value must not be printed"
    assert verdicts["port"] == "PASS", shown  # http.server listens on 0.0.0.0:8080
    assert verdicts["health"] == "FAIL", shown  # 404 on /health
    assert report["ok"] is False and out.returncode == 1, shown
    assert "maserve-check-" not in _containers(engine).replace("maserve-check-bad", ""), "container left behind"


def test_image_facts_without_an_engine() -> None:
    """The verdicts on an inspected image's config and a probe's output, no engine needed."""
    from maserve.check.image import Probe, image_checks
    from maserve.check.target import Options

    good = {"Size": 334_000_000, "Config": {"Cmd": ["sh", "/home/run.sh"], "User": "1000:100",
                                            "Env": ["PATH=/opt/venv/bin", "GPG_KEY=ABCD"]}}
    probe = Probe(boot_file=True, tools={"python3"}, users={"1000": "ma-user"}, scanned=24)
    found = {r.check: r for r in image_checks(good, probe, Options())}
    assert [found[n].verdict for n in NAMES[9:]] == ["PASS", "PASS", "PASS", "WARN", "PASS"]
    assert "ma-user" in found["user"].evidence and "java, zip" in found["batch-deps"].evidence
    assert {r.check: r.verdict for r in image_checks(good, probe, Options(batch=True))}["batch-deps"] == "FAIL"

    bad = {"Size": 11 * 1024**3, "Config": {"Entrypoint": ["python3"], "Cmd": ["sh", "/home/run.sh"],
                                            "User": "0", "Env": ["HUAWEICLOUD_SDK_SK=x", "MY_TOKEN=y"]}}
    writable = Probe(boot_file=True, users={"1000": "ma-user"}, home="/home/ma-user",
                     writable=["/home/mind/model", "/home/mind/model/model.onnx"])
    found = {r.check: r for r in image_checks(good, writable, Options())}
    assert found["user"].verdict == "WARN"
    assert "outside /home/ma-user, /tmp, /var/tmp: /home/mind/model, /home/mind/model/model.onnx" in found["user"].evidence

    probe = Probe(boot_file=False, findings={"password": ["/app/settings.ini"]})
    found = {r.check: r for r in image_checks(bad, probe, Options())}
    assert [found[n].verdict for n in NAMES[9:]] == ["FAIL", "FAIL", "WARN", "WARN", "WARN"]
    assert "Entrypoint" in found["boot"].evidence and "/home/run.sh is not in the image" in found["boot"].evidence
    assert "HUAWEICLOUD_SDK_SK" in found["secrets"].evidence and "MY_TOKEN" in found["secrets"].evidence
    assert "/app/settings.ini" in found["secrets"].evidence and "=x" not in found["secrets"].evidence


def test_a_script_that_hard_codes_home_mind_model_runs_in_the_image(engine: str, mnist_image: str) -> None:
    """ModelArts puts the model package at /home/mind/model; scripts open files there by that path.
    The image serves whatever is there: here a fixture mounted in place of the MNIST model."""
    import http.client
    import socket
    import time

    fixture = ROOT / "tests" / "models" / "compat_hardcoded"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = f"maserve-test-hardcoded-{port}"
    subprocess.run([engine, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-v", f"{fixture}:/home/mind/model:ro", mnist_image], check=True, capture_output=True, timeout=120)
    try:
        answer, deadline = None, time.monotonic() + 60
        while answer is None and time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", "/", body=json.dumps({"index": 1}), headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                answer = (reply.status, json.loads(reply.read()))
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.3)
        logs = subprocess.run([engine, "logs", name], capture_output=True, text=True, timeout=30)
        assert answer == (200, {"label": "dog", "model_path": "/home/mind/model"}), logs.stdout + logs.stderr
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)
