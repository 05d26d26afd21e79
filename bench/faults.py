#!/usr/bin/env python3
"""Faults and hostile clients against a real maserve, with the figures RELIABILITY.md quotes.

Each scenario starts `maserve serve examples/mnist` (2 workers) under `ulimit -n 1024` (the usual
soft limit, and what a podman container gets here), runs wrk's 64-connection MNIST load as the
legitimate traffic, probes `GET /health` every 0.2 s, and applies one fault:

- idle-flood: 2,600 connections that send nothing (a load balancer's pool, a buggy client);
- upload-flood: 2,600 uploads that send their headers and part of the body, then nothing;
- slowloris: 2,600 connections that send half their headers, then nothing;
- kill-worker: SIGKILL of one worker under load; time until /health answers 200 again;
- kill-master: SIGKILL of the master; time until nothing listens on the port.

Reported per scenario: the load's requests and errors during the fault and after it, the health
probes that failed, and the time to recover (first success of the load after the fault ends).

    .venv/bin/python bench/faults.py                  # every scenario, ~3 minutes
    .venv/bin/python bench/faults.py idle-flood       # one of them
    .venv/bin/python bench/faults.py --output RELIABILITY.md   # replaces the measured table there
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (replace_section, git revision, CPU model)
from load import run_wrk  # noqa: E402
from servers import HOST, REPO, free_port  # noqa: E402

BEGIN, END = "<!-- bench/faults.py -->", "<!-- /bench/faults.py -->"
MNIST = REPO / "examples" / "mnist"
IMAGE = MNIST / "samples" / "digit_7.png"  # as bench/run.py
OPEN_FILES = 1024
HOLDERS = 2600


@dataclass
class Outcome:
    scenario: str
    fault: str
    during: dict = field(default_factory=dict)  # wrk's numbers while the fault lasts
    after: dict = field(default_factory=dict)  # and once it is over
    probes: tuple[int, int] = (0, 0)  # health probes failed, sent
    recover_s: float | None = None
    note: str = ""


class Server:
    """maserve on MNIST under `ulimit -n`, its output in a file."""

    checkout: Path | None = None  # --before: serve from this checkout's src/ instead

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="bench-faults-", suffix=".log", delete=False)
        full_env = {**os.environ, "MASERVE_HOST": HOST, "MASERVE_PORT": str(self.port), "MASERVE_WORKERS": "2",
                    "MASERVE_GRACE_SECONDS": "0", "MASERVE_MODEL_DIR": str(MNIST), **(env or {})}
        if self.checkout is not None:
            full_env["PYTHONPATH"] = str(self.checkout.resolve() / "src")
        command = f'ulimit -n {OPEN_FILES} && exec "$0" -m maserve serve'
        self.proc = subprocess.Popen(["sh", "-c", command, sys.executable],
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(lambda: health(self.port) == 200, 60):
            self.stop()
            raise RuntimeError(f"maserve did not become healthy: {Path(self.log.name).read_text()[-1500:]}")

    def workers(self) -> set[int]:
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return {int(p) for p in f.read().split()}
        except OSError:
            return set()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def health(port: int, timeout: float = 2) -> int:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return 0


def wait_for(predicate, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


class Prober:
    """GET /health every 0.2 s in a thread: (failed, sent)."""

    def __init__(self, port: int) -> None:
        self.port, self.sent, self.failed = port, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sent += 1
            self.failed += health(self.port) != 200

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.failed, self.sent


def hold(port: int, count: int, opening: bytes) -> list[socket.socket]:
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection((HOST, port), timeout=5)
            if opening:
                sock.sendall(opening)
            held.append(sock)
        except OSError:
            break
    return held


def load(port: int, seconds: int) -> dict:
    return run_wrk(f"http://{HOST}:{port}/", IMAGE, 64, seconds)[1]


def first_success_after(port: int, timeout: float = 30) -> float | None:
    started = time.monotonic()
    body, ctype = _multipart()
    while time.monotonic() - started < timeout:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("POST", "/", body, {"Content-Type": ctype})
            if conn.getresponse().status == 200:
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    return None


def _multipart() -> tuple[bytes, str]:
    data = IMAGE.read_bytes()
    body = (b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"digit.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
    return body, "multipart/form-data; boundary=b"


def flood(name: str, fault: str, opening: bytes, env: dict[str, str] | None = None, settle: float = 0.0) -> Outcome:
    server = Server(env)
    try:
        prober = Prober(server.port)
        held = hold(server.port, HOLDERS, opening)
        time.sleep(settle)
        during = load(server.port, 8)
        for sock in held:
            sock.close()
        recover = first_success_after(server.port)
        after = load(server.port, 4)
        probes = prober.stop()
        return Outcome(name, fault, during, after, probes, recover, f"{len(held)} connections held")
    finally:
        server.stop()


def kill_worker() -> Outcome:
    server = Server()
    try:
        prober = Prober(server.port)
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(load(server.port, 8)))
        thread.start()
        time.sleep(3)
        victim = min(server.workers())
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        before = server.workers()

        def replacement_loaded() -> bool:
            for line in Path(server.log.name).read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("message") == "model loaded and warmed up" and record.get("pid") not in before:
                    return True
            return False

        wait_for(replacement_loaded, 30)
        recover = time.monotonic() - killed
        thread.join(timeout=60)
        after = load(server.port, 4)
        return Outcome("kill-worker", "SIGKILL of one of 2 workers under 64 connections", result, after,
                       prober.stop(), recover, "recovery: until the replacement has loaded the model")
    finally:
        server.stop()


def kill_master() -> Outcome:
    server = Server()
    try:
        workers = server.workers()
        killed = time.monotonic()
        os.kill(server.proc.pid, signal.SIGKILL)

        def silent() -> bool:
            try:
                socket.create_connection((HOST, server.port), timeout=1).close()
                return False
            except OSError:
                return True

        gone = wait_for(lambda: silent() and not any(_alive(p) for p in workers), 30)
        took = time.monotonic() - killed
        return Outcome("kill-master", "SIGKILL of the master", {}, {}, (0, 0), took if gone else None,
                       "recovery: until no worker is left and nothing listens on the port")
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SCENARIOS = {
    "idle-flood": lambda: flood("idle-flood", f"{HOLDERS} idle connections held during the load", b""),
    "upload-flood": lambda: flood(
        "upload-flood", f"{HOLDERS} uploads stalled after their headers and 10 bytes",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n--b\r\nCont"),
    "slowloris": lambda: flood(
        "slowloris", f"{HOLDERS} connections stalled half-way through their headers (header timeout 30 s: "
        "they outlast the load)", b"POST / HTTP/1.1\r\nHost: x\r\nContent-", settle=1.5),
    "kill-worker": kill_worker,
    "kill-master": kill_master,
}


def errors(numbers: dict) -> str:
    if not numbers:
        return ""
    e = numbers["errors"]
    return f"{e['non2xx']} non-2xx, {e['connect'] + e['read'] + e['write']} socket, {e['timeout']} timeouts"


def render(outcomes: list[Outcome]) -> str:
    lines = [
        BEGIN,
        "## Measured (bench/faults.py)",
        "",
        f"Revision {report.git_revision()}, {report.cpu_model()}; maserve on examples/mnist, 2 workers, "
        f"`ulimit -n {OPEN_FILES}` (caps derived: {OPEN_FILES - 128} connections and {(OPEN_FILES - 128) // 4} "
        "requests in flight per worker); the load is wrk, 64 connections of MNIST uploads; `/health` "
        "probed every 0.2 s throughout.",
        "",
        "| scenario | fault | load during (req/s; errors) | load after | health probes failed | recovery |",
        "|---|---|---|---|---:|---:|",
    ]
    for o in outcomes:
        during = f"{o.during['rps']:,.0f} req/s; {errors(o.during)}" if o.during else "n/a"
        after = f"{o.after['rps']:,.0f} req/s; {errors(o.after)}" if o.after else "n/a"
        recover = f"{o.recover_s:.2f} s" if o.recover_s is not None else "did not recover"
        lines.append(f"| {o.scenario} | {o.fault} ({o.note}) | {during} | {after} | {o.probes[0]} of {o.probes[1]} | "
                     f"{recover} |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} [all]")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also run the floods against the maserve checkout DIR (e.g. a git worktree)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client holds thousands of sockets
    outcomes = []
    for name in args.scenarios or list(SCENARIOS):
        print(f"[faults] {name}", file=sys.stderr, flush=True)
        outcomes.append(SCENARIOS[name]())
        if args.before is not None and name.endswith(("flood", "slowloris")):
            print(f"[faults] {name}, served by {args.before}", file=sys.stderr, flush=True)
            Server.checkout = args.before
            try:
                before = SCENARIOS[name]()
            finally:
                Server.checkout = None
            before.scenario += f" (before: {report.git_revision(args.before)})"
            outcomes.append(before)
    text = render(outcomes)
    print(text)
    if args.output:
        report.replace_section(args.output, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
