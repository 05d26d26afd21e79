"""`maserve check` against deliberately broken servers (tests/broken/server.py): each defect must make
exactly its own check FAIL and leave every other check PASS or SKIP; the correct server passes all.

Real processes: the checker runs as a subprocess and starts the server itself on port 8080 (8000 for
port-8000), so these tests need those ports free and run one at a time."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MASERVE = Path(sys.executable).parent / "maserve"
SERVER = "tests/broken/server.py"  # relative to ROOT, the checker's working directory
CONFIG = "tests/broken/config.json"  # samples/ next to it: seven.png and expected.json
CHECKS = ["config", "port", "health", "apis", "logs", "metrics", "keepalive", "shutdown"]
HTTP_CHECKS = {"health", "apis", "logs", "metrics", "keepalive", "shutdown"}
DEFAULT_OPTIONS = {"--grace": "3", "--stop-bound": "20", "--keepalive-seconds": "3"}
RUN_TIMEOUT = 180  # one checker run: start, a few requests, idle 3-8 s, 3 s grace, up to 20 s stop


def checker_available() -> bool:
    if not MASERVE.exists():
        return False
    try:
        result = subprocess.run([str(MASERVE), "check", "--help"], check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def port_busy(port: int) -> bool:
    """Something already listens on `port` (any address), or we may not bind it."""
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from a run is fine
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


pytestmark = [
    pytest.mark.skipif(not checker_available(), reason="`maserve check` is not available yet (check --help fails)"),
    pytest.mark.skipif(port_busy(8080), reason="port 8080 is busy: the checker's servers must listen on it"),
]

# (server defect, the check it must fail (None: all PASS), extra server arguments, checker options)
CASES = [
    pytest.param("none", None, [], {}, id="correct"),
    pytest.param("none", None, ["--slow-ms", "500"], {}, id="correct-slow-500ms"),
    pytest.param("health-True", "health", [], {}, id="health-True"),
    pytest.param("health-html", "health", [], {}, id="health-html"),
    pytest.param("localhost-only", "port", [], {}, id="localhost-only"),
    pytest.param("port-8000", "port", [], {}, id="port-8000"),
    pytest.param("idle-close-5s", "keepalive", [], {"--keepalive-seconds": "8"}, id="idle-close-5s"),
    pytest.param("exit-on-sigterm", "shutdown", [], {}, id="exit-on-sigterm"),
    pytest.param("stop-accepting-early", "shutdown", [], {}, id="stop-accepting-early"),
    pytest.param("drop-inflight", "shutdown", ["--slow-ms", "500"], {}, id="drop-inflight"),
    pytest.param("past-90s", "shutdown", [], {"--grace": "3", "--stop-bound": "8"}, id="past-90s"),
    pytest.param("bad-schema", "apis", [], {}, id="bad-schema"),
    pytest.param("no-logs", "logs", [], {}, id="no-logs"),
    pytest.param("metrics-garbage", "metrics", [], {}, id="metrics-garbage"),
]


def wait_port_free(port: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_busy(port):
            return True
        time.sleep(0.2)
    return False


def run_check(defect: str, server_args: list[str], options: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = shlex.join([sys.executable, SERVER, "--defect", defect, *server_args])
    argv = [str(MASERVE), "check", "--cmd", cmd, "--config", CONFIG, "--json"]
    for name, value in {**DEFAULT_OPTIONS, **options}.items():
        argv += [name, value]
    result = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"`maserve check` printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result, report


@pytest.mark.parametrize(("defect", "failing", "server_args", "options"), CASES)
def test_each_defect_fails_exactly_its_check(
    defect: str, failing: str | None, server_args: list[str], options: dict[str, str]
) -> None:
    if not wait_port_free(8080):
        pytest.skip("port 8080 is busy: the checker's servers must listen on it")
    if defect == "port-8000" and not wait_port_free(8000):
        pytest.skip("port 8000 is busy: the port-8000 server listens on it")
    started = time.monotonic()
    result, report = run_check(defect, server_args, options)
    elapsed = time.monotonic() - started
    shown = json.dumps(report, indent=1) + f"\nexit {result.returncode}, stderr:\n{result.stderr[-2000:]}"
    try:
        verdicts = {r["check"]: r["verdict"] for r in report["results"]}
        assert [r["check"] for r in report["results"]] == CHECKS, shown
        for r in report["results"]:
            assert r["verdict"] in {"PASS", "FAIL", "WARN", "SKIP"}, shown
            assert isinstance(r["evidence"], str) and isinstance(r["spec"], str), shown
        if failing is None:
            assert all(v == "PASS" for v in verdicts.values()), shown
            assert report["ok"] is True and result.returncode == 0, shown
        else:
            assert verdicts[failing] == "FAIL", shown
            assert report["results"][CHECKS.index(failing)]["evidence"], shown  # says why
            others = {c: v for c, v in verdicts.items() if c != failing}
            assert all(v in {"PASS", "SKIP"} for v in others.values()), shown
            assert report["ok"] is False and result.returncode != 0, shown
        if defect == "port-8000":  # nothing on 8080: the HTTP checks cannot run
            assert all(verdicts[c] == "SKIP" for c in HTTP_CHECKS), shown
        if defect == "past-90s":  # the checker gave up at --stop-bound and killed it, it did not wait
            assert elapsed < 8 + 45, f"took {elapsed:.0f} s\n{shown}"
    finally:
        # The checker must not leave the server behind (past-90s hangs until killed).
        assert wait_port_free(8080) and wait_port_free(8000), f"a server still listens after the check\n{shown}"
