"""Accepting connections so that the workers share them evenly.

Every worker waits on the one listening socket the master opened, and the event loop of whichever
wakes first accepts every connection waiting: when a client opens its connections at once (a load
balancer's pool, a benchmark's eight), one worker may get all of them and leave the other cores
idle for as long as they stay open (bench/RESULTS.md: ResNet-50 at 8 connections, 10.4 req/s with
an 8/0 split against 20.9 with 5/3). Here each worker accepts one connection per wake-up and
publishes how many it holds on a board in shared memory; a worker holding more than the least
loaded worker that is accepting steps back for a moment (ACCEPT_PAUSE_SECONDS), so that one takes
the next connection. It steps back for at most MAX_DEFER_SECONDS in a row, then accepts anyway: a
worker whose loop is busy or that stopped accepting never leaves a connection waiting long.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, Callable

log = logging.getLogger("maserve.server")

ACCEPT_PAUSE_SECONDS = 0.002
MAX_DEFER_SECONDS = 0.02
OUT_OF_FILES_PAUSE_SECONDS = 0.05  # EMFILE: the connection cap's eviction frees descriptors meanwhile
NOT_ACCEPTING = -1


class ConnectionBoard:
    """Each worker slot's open connections (NOT_ACCEPTING when it is not accepting), in memory
    shared by the master and its workers (made before the fork)."""

    def __init__(self, slots: int) -> None:
        import multiprocessing

        self._counts = multiprocessing.RawArray("l", [NOT_ACCEPTING] * slots)

    def publish(self, slot: int, count: int) -> None:
        self._counts[slot] = count

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections another accepting worker holds, None when no other accepts."""
        counts = [c for i, c in enumerate(self._counts) if i != slot and c != NOT_ACCEPTING]
        return min(counts) if counts else None

    def counts(self) -> list[int]:
        return list(self._counts)


class Acceptor:
    """One worker's accept loop on one listening socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol_factory: Callable[[], Any],
                 connections: set[Any], board: ConnectionBoard | None, slot: int, ssl: Any = None) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = protocol_factory
        self._connections = connections
        self._board = board
        self._slot = slot
        self._ssl = ssl
        self._deferring_since: float | None = None
        self._setting_up = 0  # accepted, not yet in `connections` (connection_made runs in a task)
        self._watching = False
        self._resume: asyncio.TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        self._sock.setblocking(False)
        self.publish()
        self._watch()

    def stop(self) -> None:
        """Accept nothing more (the drain): siblings no longer step back for this worker."""
        self._stopped = True
        if self._resume is not None:
            self._resume.cancel()
        self._unwatch()
        if self._board is not None:
            self._board.publish(self._slot, NOT_ACCEPTING)

    def publish(self) -> None:
        """This worker's open connections, for its siblings (on every accept and close)."""
        if self._board is not None and not self._stopped:
            self._board.publish(self._slot, self._held())

    def _held(self) -> int:
        return len(self._connections) + self._setting_up

    def _watch(self) -> None:
        self._resume = None
        if not self._stopped and not self._watching:
            self._loop.add_reader(self._fd, self._readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _pause(self, seconds: float) -> None:
        self._unwatch()
        self._resume = self._loop.call_later(seconds, self._watch)

    def _readable(self) -> None:
        if self._board is not None:
            fewest = self._board.fewest_elsewhere(self._slot)
            now = self._loop.time()
            if fewest is not None and self._held() > fewest:
                if self._deferring_since is None:
                    self._deferring_since = now
                if now - self._deferring_since < MAX_DEFER_SECONDS:
                    self._pause(ACCEPT_PAUSE_SECONDS)  # a less loaded sibling takes this one
                    return
        self._deferring_since = None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # a sibling took it, or the client gave up
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("accept failed: out of descriptors or memory; pausing accept",
                            extra={"error": str(exc)})
            else:
                log.exception("accept failed; pausing accept")
            self._pause(OUT_OF_FILES_PAUSE_SECONDS)
            return
        conn.setblocking(False)
        self._setting_up += 1
        self.publish()  # at once: a sibling woken by the same connection burst sees it
        self._loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            try:
                await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
            finally:
                self._setting_up -= 1
                self.publish()
        except (OSError, asyncio.CancelledError) as exc:  # a TLS handshake that failed, a client gone
            conn.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
        except Exception:  # never let one connection's set-up end the accept loop
            conn.close()
            log.debug("a connection could not be set up", exc_info=True)
