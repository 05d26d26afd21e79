"""The checks that need no HTTP: config.json's rules and where the service listens."""

from __future__ import annotations

import time
from pathlib import Path

from maserve.check import listen
from maserve.check.result import FAIL, PASS, SKIP, WARN, Result, one_line, progress
from maserve.check.target import Options, Target
from maserve.config import ConfigError, read_config
from maserve.validate import ERROR, validate_config

POLL = 0.1
# Once the command listens somewhere else, give it this long to open the expected port too.
OTHER_PORT_PATIENCE = 5.0


def check_config(path: Path | None) -> Result:
    if path is None:
        return Result("config", SKIP, "no --config given")
    try:
        findings = validate_config(read_config(path))
    except ConfigError as exc:
        return Result("config", FAIL, one_line(str(exc)))
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        listed = "; ".join(f"{f.path}: {f.message}" for f in errors)
        return Result("config", FAIL, one_line(f"{len(errors)} error(s): {listed}"))
    if findings:
        listed = "; ".join(f"{f.path}: {f.message}" for f in findings)
        return Result("config", WARN, one_line(f"valid, {len(findings)} warning(s): {listed}"))
    return Result("config", PASS, f"{path}: valid for ModelArts")


def check_url_port(target: Target, options: Options) -> Result:
    note = "(the listen address is not checkable from outside the process)"
    if target.url_port == options.port:
        return Result("port", PASS, f"URL port {target.url_port} is the expected {options.port} {note}")
    return Result("port", FAIL, f"URL port {target.url_port}, ModelArts calls {options.port} {note}")


def wait_listening(target: Target, options: Options) -> tuple[Result, bool]:
    """Poll /proc until the command listens on the expected port; the bool says HTTP checks can run."""
    assert target.proc is not None
    progress(f"waiting (up to {options.listen_timeout:g} s) for the command to listen on port {options.port}")
    deadline = target.started + options.listen_timeout
    listens: list[tuple[str, int]] = []
    other_since: float | None = None
    for _ in range(int(options.listen_timeout / POLL) + 2):
        listens = target.listens()
        on_port = [a for a, p in listens if p == options.port]
        elapsed = time.monotonic() - target.started
        if on_port:
            where = listen.describe(listens)
            if any(listen.all_interfaces(a) for a in on_port):
                return Result("port", PASS, f"listens on {where} after {elapsed:.1f} s"), True
            why = "only on loopback: unreachable from outside the container" if all(
                a in ("127.0.0.1", "::1") for a in on_port) else "not on 0.0.0.0 (every interface)"
            return Result("port", FAIL, f"listens on {where}, {why}"), True
        if target.proc.poll() is not None:
            return Result("port", FAIL, one_line(
                f"exited with code {target.proc.returncode} after {elapsed:.1f} s without listening on "
                f"{options.port}; last output: {target.tail()}")), False
        if listens and other_since is None:
            other_since = time.monotonic()
            deadline = min(deadline, other_since + OTHER_PORT_PATIENCE)
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    elapsed = time.monotonic() - target.started
    return Result("port", FAIL, f"not listening on port {options.port} after {elapsed:.0f} s; "
                  f"listens on {listen.describe(listens)}"), False
