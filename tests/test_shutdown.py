"""The stop sequence ModelArts relies on, with real processes: serve through the grace period after
SIGTERM (or SIGINT), then drain in-flight requests and exit 0, all within 90 s."""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from helpers import (
    ECHO_DIR,
    MNIST_DIR,
    Server,
    echo_request,
    heldout,
    mnist_model_present,
    png_bytes,
    post_image,
    start_server,
)

# Requests sent during the grace window must all succeed; errors are only allowed after it.
GRACE_SECONDS = 3.0
EXIT_SLACK_SECONDS = 4.0
# The client's clock starts the grace a little before the master does, but a request written in the
# last instant of the window can still lose the race with the server closing idle keep-alive
# connections and its listener (the worker notices the stop within its 0.1 s tick, or sooner).
# Requests sent within this margin before the grace ends may go either way.
BOUNDARY_SECONDS = 0.05


@dataclass
class Attempt:
    sent: float  # time.monotonic() just before the request was written
    ok: bool  # 200 with the right answer
    detail: str


def _json_field(body: bytes, name: str) -> object:
    try:
        return json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None


def _echo_check(rng: random.Random) -> Callable[[http.client.HTTPConnection], tuple[bool, str]]:
    def check(conn: http.client.HTTPConnection) -> tuple[bool, str]:
        size = rng.randint(1, 4096)
        reply = echo_request(conn, size)
        ok = reply.status == 200 and _json_field(reply.body, "size") == size
        return ok, f"{reply.status} {reply.body[:200]!r} (sent {size} bytes)"

    return check


def _mnist_pool(server: Server) -> list[tuple[bytes, int]]:
    """Held-out digits the model reads correctly before the stop signal (its answers must not change)."""
    images, labels = heldout(200)
    pool = []
    conn = server.connect()
    try:
        for image, label in zip(images, labels):
            data = png_bytes(image)
            reply = post_image(conn, data)
            assert reply.status == 200, reply.body
            if reply.json()["mnist_result"] == int(label):
                pool.append((data, int(label)))
    finally:
        conn.close()
    assert len(pool) >= 0.9 * len(images), f"the model reads only {len(pool)}/{len(images)} held-out digits"
    return pool


def _mnist_check(
    pool: list[tuple[bytes, int]], rng: random.Random
) -> Callable[[http.client.HTTPConnection], tuple[bool, str]]:
    def check(conn: http.client.HTTPConnection) -> tuple[bool, str]:
        data, label = rng.choice(pool)
        reply = post_image(conn, data)
        ok = reply.status == 200 and _json_field(reply.body, "mnist_result") == label
        return ok, f"{reply.status} {reply.body[:200]!r} (expected {label})"

    return check


def _keepalive_client(
    server: Server,
    check: Callable[[http.client.HTTPConnection], tuple[bool, str]],
    stop: threading.Event,
    attempts: list[Attempt],
    reconnects: list[float],
) -> None:
    """One keep-alive connection, requests back to back; reconnects (and records it) when it breaks."""
    conn = server.connect(timeout=10)
    deadline = time.monotonic() + 60
    try:
        for _ in range(200_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            sent = time.monotonic()
            try:
                ok, detail = check(conn)
            except (OSError, http.client.HTTPException) as exc:
                attempts.append(Attempt(sent, False, f"connection error: {exc!r}"))
                conn.close()
                conn = server.connect(timeout=10)
                reconnects.append(time.monotonic())
                time.sleep(0.05)
                continue
            attempts.append(Attempt(sent, ok, detail))
    finally:
        conn.close()


def _new_connection_client(
    server: Server,
    check: Callable[[http.client.HTTPConnection], tuple[bool, str]],
    stop: threading.Event,
    attempts: list[Attempt],
) -> None:
    """A fresh TCP connection for every request, as a load balancer's new clients would make."""
    deadline = time.monotonic() + 60
    for _ in range(10_000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        conn = server.connect(timeout=10)
        sent = time.monotonic()
        try:
            ok, detail = check(conn)
            attempts.append(Attempt(sent, ok, detail))
        except (OSError, http.client.HTTPException) as exc:
            attempts.append(Attempt(sent, False, f"connection error: {exc!r}"))
        finally:
            conn.close()
        time.sleep(0.05)


def _wait_exit(server: Server, timeout: float) -> tuple[int | None, float]:
    """Wait for the process; return (exit code or None if still running, time it was seen gone)."""
    try:
        code = server.proc.wait(timeout=timeout)
    except Exception:
        return None, time.monotonic()
    return code, time.monotonic()


def _messages(server: Server) -> list[str]:
    return [record.get("message", "") for record in server.log_records()]


def test_grace_window_under_load(tmp_path: Path) -> None:
    use_mnist = mnist_model_present()
    model_dir = MNIST_DIR if use_mnist else ECHO_DIR
    server = start_server(tmp_path, model_dir, env={"MASERVE_GRACE_SECONDS": f"{GRACE_SECONDS:g}"})
    try:
        pool = _mnist_pool(server) if use_mnist else []

        def make_check(seed: int) -> Callable[[http.client.HTTPConnection], tuple[bool, str]]:
            rng = random.Random(seed)  # one generator per client thread
            return _mnist_check(pool, rng) if use_mnist else _echo_check(rng)

        stop = threading.Event()
        keepalive_attempts: list[list[Attempt]] = [[] for _ in range(4)]
        reconnects: list[list[float]] = [[] for _ in range(4)]
        fresh_attempts: list[Attempt] = []
        threads = [
            threading.Thread(
                target=_keepalive_client,
                args=(server, make_check(i), stop, keepalive_attempts[i], reconnects[i]),
                daemon=True,
            )
            for i in range(4)
        ]
        threads.append(
            threading.Thread(target=_new_connection_client, args=(server, make_check(99), stop, fresh_attempts), daemon=True)
        )
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the load is running before the stop signal

        sigterm_at = time.monotonic()
        server.signal(signal.SIGTERM)
        grace_end = sigterm_at + GRACE_SECONDS
        code, gone_at = _wait_exit(server, GRACE_SECONDS + EXIT_SLACK_SECONDS)
        time.sleep(0.3)  # clients keep trying a little after the exit: those must fail
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in threads), "a client thread hung"

        assert code == 0, f"exit code {code} (None: still running)\n{server.logs()}"
        assert gone_at - sigterm_at <= GRACE_SECONDS + EXIT_SLACK_SECONDS

        all_keepalive = [a for attempts in keepalive_attempts for a in attempts]
        for name, attempts in [("keep-alive", all_keepalive), ("new-connection", fresh_attempts)]:
            in_grace = [a for a in attempts if sigterm_at <= a.sent < grace_end]
            failed = [a for a in attempts if a.sent < grace_end - BOUNDARY_SECONDS and not a.ok]
            assert not failed, f"{name} requests failed before the grace ended ({len(failed)}): {failed[:5]}"
            assert len(in_grace) >= 10, f"only {len(in_grace)} {name} requests during the grace window"
        for i, attempts in enumerate(keepalive_attempts):
            assert sum(1 for a in attempts if sigterm_at <= a.sent < grace_end) >= 5, f"client {i} barely ran"
        # New connections made during the grace window were accepted and answered: spread over the window.
        fresh_in_grace = [a.sent - sigterm_at for a in fresh_attempts if sigterm_at <= a.sent < grace_end]
        assert min(fresh_in_grace) < 0.5 and max(fresh_in_grace) > GRACE_SECONDS - 0.5, fresh_in_grace

        # After the grace: refused or closed, and only then.
        late = [a for a in all_keepalive + fresh_attempts if a.sent >= grace_end - BOUNDARY_SECONDS]
        late_errors = [a for a in late if not a.ok]
        assert late_errors, "no request was refused after the grace period"
        # Refused or closed, never a wrong answer or an error status.
        assert all(a.detail.startswith("connection error") for a in late_errors), late_errors[:5]
        after_exit = [a for a in late if a.sent > gone_at]
        assert not any(a.ok for a in after_exit), "a request was answered after the process exited"
        for attempts in reconnects:
            assert all(t >= grace_end - BOUNDARY_SECONDS for t in attempts), "a keep-alive connection broke early"

        messages = _messages(server)
        assert any(m.startswith("SIGTERM received") for m in messages), messages
        assert any(m.startswith("grace period over") for m in messages), messages
        assert any("exiting" in m for m in messages), messages
    finally:
        server.stop()


def test_in_flight_request_completes_during_drain(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_GRACE_SECONDS": "1"})
    try:
        result: dict[str, object] = {}

        def slow_request() -> None:
            conn = server.connect(timeout=20)
            try:
                result["reply"] = echo_request(conn, 5000, sleep=3)
            except (OSError, http.client.HTTPException) as exc:
                result["error"] = exc
            finally:
                result["done_at"] = time.monotonic()
                conn.close()

        sigterm_at = time.monotonic()
        server.signal(signal.SIGTERM)
        time.sleep(0.6)  # 0.4 s before the grace ends: sent during the grace, running when draining begins
        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the in-flight request hung"
        assert "error" not in result, f"{result.get('error')!r}\n{server.logs()}"
        reply = result["reply"]
        assert reply.status == 200, reply.body
        assert reply.json()["size"] == 5000
        assert result["done_at"] - sigterm_at > 1.0 + 1.0  # it really was in flight while draining
        code, gone_at = _wait_exit(server, 10)
        assert code == 0, f"exit code {code}\n{server.logs()}"
        logs = server.logs()
        assert logs.index("grace period over") < logs.index('"path": "/echo", "status": 200'), logs
    finally:
        server.stop()


def test_sigint_behaves_like_sigterm(tmp_path: Path) -> None:
    grace = 2.0
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_GRACE_SECONDS": f"{grace:g}"})
    try:
        keepalive = server.connect(timeout=10)
        assert echo_request(keepalive, 10).status == 200
        sigint_at = time.monotonic()
        server.signal(signal.SIGINT)
        answered = 0
        for i in range(100):
            if time.monotonic() > sigint_at + grace - 0.3:
                break
            reply = echo_request(keepalive, 100 + i)  # the open keep-alive connection
            assert reply.status == 200 and reply.json()["size"] == 100 + i
            conn = server.connect(timeout=10)  # and a new connection
            try:
                reply = echo_request(conn, 200 + i)
                assert reply.status == 200 and reply.json()["size"] == 200 + i
            finally:
                conn.close()
            answered += 1
            time.sleep(0.1)
        keepalive.close()
        assert answered >= 5
        assert server.proc.poll() is None, "exited before the grace period ended"
        code, gone_at = _wait_exit(server, grace + EXIT_SLACK_SECONDS)
        assert code == 0, f"exit code {code}\n{server.logs()}"
        assert gone_at - sigint_at >= grace - 0.1
        messages = _messages(server)
        assert any(m.startswith("SIGINT received") for m in messages), messages
        assert any(m.startswith("grace period over") for m in messages), messages
    finally:
        server.stop()


@pytest.mark.slow
def test_default_grace_is_60_seconds_and_exit_within_90(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, unset=("MASERVE_GRACE_SECONDS",))
    try:
        started = next(r for r in server.log_records() if r.get("message") == "maserve started")
        assert started["grace_seconds"] == 60
        keepalive = server.connect(timeout=10)  # idle for 55 s: the 200 s keep-alive holds it open
        assert echo_request(keepalive, 1).status == 200
        sigterm_at = time.monotonic()
        server.signal(signal.SIGTERM)
        for _ in range(60):  # ~1 s steps up to 55 s after SIGTERM; the server must stay up
            remaining = sigterm_at + 55 - time.monotonic()
            if remaining <= 0:
                break
            assert server.proc.poll() is None, f"exited {time.monotonic() - sigterm_at:.1f} s after SIGTERM"
            time.sleep(min(1.0, remaining))
        conn = server.connect(timeout=10)
        try:
            reply = echo_request(conn, 55)
        finally:
            conn.close()
        assert reply.status == 200 and reply.json()["size"] == 55
        reply = echo_request(keepalive, 56)
        assert reply.status == 200 and reply.json()["size"] == 56
        keepalive.close()
        code, gone_at = _wait_exit(server, max(0.0, sigterm_at + 90 - time.monotonic()))
        assert code == 0, f"exit code {code} (None: still running 90 s after SIGTERM)\n{server.logs()}"
        assert 60 - 0.5 <= gone_at - sigterm_at < 90
    finally:
        server.stop()


def test_refuses_grace_plus_drain_over_90_seconds(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_GRACE_SECONDS": "80"}, wait=False)
    try:
        started = time.monotonic()
        code, _ = _wait_exit(server, 15)
        assert code == 2, f"exit code {code}\n{server.logs()}"
        assert time.monotonic() - started < 15
        logs = server.logs()
        assert "MASERVE_GRACE_SECONDS" in logs and "MASERVE_DRAIN_SECONDS" in logs, logs
        assert "90" in logs, logs
        assert "Listening at" not in logs
    finally:
        server.stop()


def test_answers_ask_clients_to_reconnect_during_the_grace(tmp_path: Path) -> None:
    """Keep-alive until SIGTERM; then `Connection: close` on each answer, so no client is left holding
    an idle connection that the drain would close under its next request."""
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_GRACE_SECONDS": "3"})
    try:
        conn = server.connect()
        before = echo_request(conn, 10)
        assert before.status == 200 and "connection" not in before.headers
        server.signal(signal.SIGTERM)
        server.wait_log(lambda r: "SIGTERM received" in r.get("message", ""))
        fresh = server.connect()
        during = echo_request(fresh, 20)
        assert during.status == 200 and during.headers.get("connection") == "close"
        fresh.close()
        conn.close()
        assert server.proc.wait(timeout=15) == 0
    finally:
        server.stop()
