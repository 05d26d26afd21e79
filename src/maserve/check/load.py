"""Concurrent request traffic for the shutdown check: keep-alive clients plus a new-connection
prober, every request recorded with its outcome, so the report can say what failed and when."""

from __future__ import annotations

import http.client
import itertools
import select
import threading
import time
from dataclasses import dataclass

from maserve.check.client import Endpoint

KEEPALIVE_CLIENTS = 4
PROBE_INTERVAL = 0.1  # a fresh connection this often: is the service still accepting?
RETRY_PAUSE = 0.05  # after a refused connection, so a stopped service is not hammered
MAX_REQUESTS = 1_000_000  # per thread, a bound besides the deadline
RACE_SECONDS = 0.1  # a request cut this fast was never read (20 ms was too tight on a loaded machine)

OK = "ok"
REFUSED = "refused"  # no connection: the listener is gone
STATUS = "status"  # answered, but not 200
DROPPED = "dropped"  # sent, then the connection ended without an answer
RACE = "race"  # cut before the server could read it (idle close, accept backlog): not a failure


@dataclass(frozen=True)
class Outcome:
    start: float
    end: float
    kind: str
    new_connection: bool


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


class Load:
    def __init__(self, endpoint: Endpoint, calls: list[Call], timeout: float, deadline: float) -> None:
        self.endpoint, self.calls, self.timeout, self.deadline = endpoint, calls, timeout, deadline
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(KEEPALIVE_CLIENTS)]
        self.threads.append(threading.Thread(target=self._prober, daemon=True))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 1)

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _record(self, start: float, kind: str, new: bool) -> None:
        with self.lock:
            self.outcomes.append(Outcome(start, time.monotonic(), kind, new))

    def _client(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        calls = itertools.islice(itertools.cycle(self.calls), index, None)
        for call in itertools.islice(calls, MAX_REQUESTS):
            if not self._running():
                break
            if conn is not None and _closed_by_peer(conn):
                conn.close()
                conn = None
            conn, kind, new, start = self._one(conn, call)
            self._record(start, kind, new)
            if kind == REFUSED:
                time.sleep(RETRY_PAUSE)
        if conn is not None:
            conn.close()

    def _prober(self) -> None:
        for _ in range(MAX_REQUESTS):
            if not self._running():
                break
            conn, kind, new, start = self._one(None, self.calls[0])
            self._record(start, kind, new)
            if conn is not None:
                conn.close()
            self.stop.wait(PROBE_INTERVAL)

    def _one(
        self, conn: http.client.HTTPConnection | None, call: Call
    ) -> tuple[http.client.HTTPConnection | None, str, bool, float]:
        """One request; returns the connection to reuse (None if it ended), outcome, new?, start."""
        start = time.monotonic()
        new = conn is None
        if conn is None:
            conn = self.endpoint.connect(self.timeout)
            try:
                conn.connect()
            except OSError:
                conn.close()
                return None, REFUSED, True, start
        try:
            conn.request(call.method, call.path, body=call.body, headers=call.headers)
        except OSError:
            conn.close()
            return None, (REFUSED if new else RACE), new, start
        try:
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            # Cut this fast, the request was never read: an idle keep-alive connection closed as it
            # left, or a new connection still in the accept backlog when the listener closed.
            fast = time.monotonic() - start < RACE_SECONDS
            return None, (RACE if fast else DROPPED), new, start
        kind = OK if resp.status == 200 else STATUS
        if resp.will_close:
            conn.close()
            return None, kind, new, start
        return conn, kind, new, start


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle connection that is readable was closed by the server (FIN/RST/close_notify)."""
    if conn.sock is None:
        return True
    readable, _, _ = select.select([conn.sock], [], [], 0)
    return bool(readable)
