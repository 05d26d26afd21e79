"""What is checked: a service at a URL, or a command the checker starts and owns (an image the
checker runs is in image.py).

A started command runs with `sh -c` in its own session (so the checker can find its sockets and
clean up every process it forked) with stdout and stderr captured to a file (the logs check).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from maserve.check import listen
from maserve.check.client import Endpoint


@dataclass(frozen=True)
class Options:
    url: str | None = None
    cmd: str | None = None
    config: Path | None = None
    cwd: Path | None = None
    port: int = 8080
    https: bool = False
    keepalive_seconds: float = 15.0
    metrics_path: str = "/metrics"
    grace: float = 60.0
    stop_bound: float = 90.0
    listen_timeout: float = 60.0
    image: str | None = None
    engine: str | None = None
    env: tuple[str, ...] = ()
    batch: bool = False
    accelerator: str | None = None  # --image: the image's (its maserve.accelerator label, or what it holds)

    @property
    def config_path(self) -> Path | None:
        if self.config is None:
            return None
        return self.config / "config.json" if self.config.is_dir() else self.config

    @property
    def model_dir(self) -> Path | None:
        path = self.config_path
        return path.parent if path else None


@dataclass
class Target:
    endpoint: Endpoint
    url_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def is_command(self) -> bool:
        return self.proc is not None

    def output(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def line_count(self) -> int:
        return self.output().count("\n")

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.output().splitlines()[-lines:])

    def listens(self) -> list[tuple[str, int]]:
        """(address, port) pairs the started command listens on."""
        assert self.proc is not None
        return listen.session_listens(self.proc.pid)

    def terminate(self) -> None:
        """SIGTERM to the service, as ModelArts stops a container."""
        os.kill(self.service_pid(), signal.SIGTERM)

    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def service_pid(self) -> int:
        """The command's own process, which gets SIGTERM as PID 1 does in the container.

        dash does not exec the last command of `sh -c`, so the checker's wrapper shell usually has
        one child: the command. Signalling the wrapper instead would kill it and orphan the service.
        """
        assert self.proc is not None
        children = _children(self.proc.pid)
        return children[0] if len(children) == 1 else self.proc.pid

    def cleanup(self) -> None:
        """SIGKILL whatever is left of the command's session, then drop the captured output."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def from_url(url: str, https: bool) -> Target:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    secure = https or parts.scheme == "https"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(Endpoint(parts.hostname or "127.0.0.1", port, secure), port)


def start_command(options: Options) -> Target:
    assert options.cmd is not None
    handle, name = tempfile.mkstemp(prefix="maserve-check-", suffix=".log")
    with os.fdopen(handle, "ab") as log_file:
        proc = subprocess.Popen(
            ["sh", "-c", options.cmd],
            cwd=options.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = Endpoint("127.0.0.1", options.port, options.https)
    return Target(endpoint, options.port, proc=proc, log_path=Path(name))


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            children += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return children
