"""Keep-alive: a connection left idle must still carry the next request (ModelArts' load balancer
reuses connections; a server that drops them early fails requests during a rolling upgrade)."""

from __future__ import annotations

import http.client
import re
import select
import time

from maserve.check.client import send
from maserve.check.result import FAIL, PASS, WARN, Result, one_line, progress
from maserve.check.target import Target

_TIMEOUT = re.compile(r"timeout\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def check_keepalive(target: Target, path: str, idle: float) -> Result:
    progress(f"keep-alive: idling one connection for {idle:g} s")
    conn = target.endpoint.connect(timeout=30)
    try:
        try:
            first = send(conn, "GET", path)
        except (OSError, http.client.HTTPException) as exc:
            return Result("keepalive", FAIL, one_line(f"first request failed: {exc!r}"))
        if first.headers.get("connection", "").lower() == "close" or conn.sock is None:
            return Result("keepalive", FAIL, "the server answered `Connection: close`: no keep-alive at all")
        announced = _announced(first.headers.get("keep-alive", ""))
        closed_after = _idle(conn, idle)
        if closed_after is not None:
            return Result("keepalive", FAIL, f"closed after {closed_after:.1f} s idle (tested {idle:g} s)")
        try:
            second = send(conn, "GET", path)
        except (OSError, http.client.HTTPException) as exc:
            return Result("keepalive", FAIL, one_line(f"second request after {idle:g} s idle failed: {exc!r}"))
    finally:
        conn.close()
    what = f"second request on the same connection after {idle:g} s idle → {second.status}"
    if announced is not None and announced < idle:
        return Result("keepalive", WARN, f"{what}, but `Keep-Alive: timeout={announced:g}` announces less")
    note = f" (Keep-Alive: timeout={announced:g})" if announced is not None else ""
    return Result("keepalive", PASS, what + note)


def _announced(header: str) -> float | None:
    match = _TIMEOUT.search(header)
    return float(match.group(1)) if match else None


def _idle(conn: http.client.HTTPConnection, idle: float) -> float | None:
    """Seconds after which the server closed the idle connection, or None if it stayed open.

    An idle HTTP/1.1 connection receives nothing; readability means FIN, RST or a TLS close_notify.
    """
    sock = conn.sock
    start = time.monotonic()
    for _ in range(int(idle) + 2):
        left = start + idle - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([sock], [], [], min(left, 1.0))
        if readable:
            return time.monotonic() - start
    return None
