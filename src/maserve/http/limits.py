"""What a worker holds for its clients, bounded: open files, connections, requests in flight.

With the usual soft limit of 1024 open files per process, a few thousand held connections (a load
balancer's pool, a buggy client, a slowloris) used every descriptor: accept() failed and every new
request was refused in silence. Here the soft limit is raised to the hard one at start, and each
worker caps its connections and its requests in flight below what its descriptors allow. At the
cap, an idle keep-alive connection (the longest idle first), or else one whose headers have been
arriving for over a second (a slowloris), makes room for the new one; at the in-flight cap, a
request whose body has been arriving for over SLOW_BODY_SECONDS at under MIN_BODY_BYTES_PER_SECOND
(a slow-body attack: the rate at which a 12 MB upload would miss the body timeout) makes room for
the new request. If there is none, the new request gets a fast `503 MASERVE.OVERLOADED` with
`Retry-After` and its connection is closed. The health check is always answered: the platform's probe must not fail because of client
traffic. Each episode of overload is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from maserve.logs import fields

log = logging.getLogger("maserve.server")

# Descriptors a worker keeps for itself beyond its connections: model files, logs, pipes, epoll,
# and the connections being answered 503 at the cap.
RESERVED_FILES = 128
MAX_DEFAULT_CONNECTIONS = 10_000  # memory, not descriptors, bounds it past here (~20 KB each)
RETRY_AFTER_SECONDS = 1
SLOW_HEADERS_SECONDS = 1.0  # headers still arriving after this long may be closed to make room
URGENT_SLOW_HEADERS_SECONDS = 0.1  # the same when the descriptors kept in reserve are running out
SLOW_BODY_SECONDS = 2.0  # a body arriving for this long, slower than the rate below, may make room
MIN_BODY_BYTES_PER_SECOND = 100_000  # 12 MB in 120 s (MASERVE_BODY_TIMEOUT_SECONDS' default)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (workers inherit it); (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a container may forbid it: keep the soft limit
            return soft, soft
        return soft, target
    return soft, soft


@dataclass(frozen=True)
class Limits:
    """One worker's caps (settings, or derived from its open-file limit when 0)."""

    max_connections: int
    max_in_flight: int
    header_timeout: float
    body_timeout: float
    send_timeout: float

    @classmethod
    def derive(cls, settings: Any, open_files: int | None = None) -> "Limits":
        if open_files is None:
            open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        connections = settings.max_connections or max(16, min(MAX_DEFAULT_CONNECTIONS, open_files - RESERVED_FILES))
        in_flight = settings.max_in_flight or max(8, connections // 4)
        return cls(connections, in_flight, settings.header_timeout_seconds, settings.body_timeout_seconds,
                   settings.send_timeout_seconds)


class Guard:
    """A worker's bookkeeping for the caps: its idle connections in idle order, and the episode."""

    def __init__(self, limits: Limits, health_path: str) -> None:
        self.limits = limits
        self.health_path = health_path
        self.idle: OrderedDict[Any, float] = OrderedDict()  # protocol → idle since, the longest idle first
        self.reading_headers: dict[Any, float] = {}  # protocol → when its headers began, oldest first
        self.reading_bodies: dict[Any, float] = {}  # protocol → when its body began, oldest first
        self._episode_started: float | None = None
        self._refused = 0
        self._evicted = 0
        self._peak = (0, 0)
        self._sweeping = False

    def watch(self, connections: set[Any], loop: Any, sweep: Any, every: float = 1.0) -> None:
        """Start the once-a-second sweep of `connections` (the first connection does it)."""
        if self._sweeping:
            return
        self._sweeping = True

        def tick() -> None:
            try:
                sweep(connections, loop.time(), self)
            except Exception:  # never let the sweep die: it is what bounds stalled clients
                log.exception("the connection sweep failed")
            loop.call_later(every, tick)

        loop.call_later(every, tick)

    # -- idle connections -----------------------------------------------------------------------
    def mark_idle(self, protocol: Any, now: float) -> None:
        self.idle[protocol] = now
        self.idle.move_to_end(protocol)

    def mark_busy(self, protocol: Any) -> None:
        self.idle.pop(protocol, None)

    def headers_started(self, protocol: Any, now: float) -> None:
        self.reading_headers[protocol] = now

    def headers_done(self, protocol: Any) -> None:
        self.reading_headers.pop(protocol, None)

    def body_started(self, protocol: Any, now: float) -> None:
        self.reading_bodies[protocol] = now

    def body_done(self, protocol: Any) -> None:
        self.reading_bodies.pop(protocol, None)

    def make_request_room(self, connections: int, in_flight: int, now: float) -> bool:
        """At the in-flight cap: answer 408 to the oldest request whose body is still arriving
        after SLOW_BODY_SECONDS at under MIN_BODY_BYTES_PER_SECOND, so that a flood of stalled
        uploads cannot keep every new request out for the body timeout. False if there is none."""
        for protocol, since in list(self.reading_bodies.items()):
            seconds = now - since
            if seconds < SLOW_BODY_SECONDS:
                return False  # the rest began later still
            if protocol.body_bytes() < MIN_BODY_BYTES_PER_SECOND * seconds:
                del self.reading_bodies[protocol]
                if protocol.close_slow_body(seconds):
                    self._evicted += 1
                    self._note(connections, in_flight, "requests in flight")
                    return True
        return False

    def make_room(self, connections: int, now: float, slow_headers: float = SLOW_HEADERS_SECONDS) -> bool:
        """Close the connection stuck longest to make room for a new one: idle between requests,
        or still sending its headers after SLOW_HEADERS_SECONDS (a slowloris: real clients send
        them in one go). The longest-stuck first, so that a flood of stalled connections makes
        room, not a busy client's keep-alive connection idle for a millisecond. False if none."""
        while True:
            idle = next(iter(self.idle.items()), None)
            slow = next(iter(self.reading_headers.items()), None)
            if slow is not None and now - slow[1] < slow_headers:
                slow = None
            if idle is not None and (slow is None or idle[1] <= slow[1]):
                del self.idle[idle[0]]
                closed = idle[0].close_idle()
            elif slow is not None:
                del self.reading_headers[slow[0]]
                closed = slow[0].close_slow_headers(now - slow[1])
            else:
                return False
            if closed:
                self._evicted += 1
                self._note(connections, 0, "connections")
                return True

    # -- the episode ----------------------------------------------------------------------------
    def refused(self, connections: int, in_flight: int, limit: str) -> None:
        self._refused += 1
        self._note(connections, in_flight, limit)

    def _note(self, connections: int, in_flight: int, limit: str) -> None:
        self._peak = (max(self._peak[0], connections), max(self._peak[1], in_flight))
        if self._episode_started is not None:
            return
        self._episode_started = time.monotonic()
        log.warning(
            f"limit reached: {limit}; evicting idle connections and answering 503 while it lasts",
            extra=fields(connections=connections, max_connections=self.limits.max_connections,
                         in_flight=in_flight, max_in_flight=self.limits.max_in_flight),
        )

    def check_eased(self, connections: int, in_flight: int) -> None:
        """End the episode once both counts are back under 90% of their caps."""
        if self._episode_started is None:
            return
        if connections >= 0.9 * self.limits.max_connections or in_flight >= 0.9 * self.limits.max_in_flight:
            return
        log.info(
            "back under the limits",
            extra=fields(seconds=round(time.monotonic() - self._episode_started, 1), refused=self._refused,
                         evicted_idle=self._evicted, peak_connections=self._peak[0], peak_in_flight=self._peak[1]),
        )
        self._episode_started = None
        self._refused = self._evicted = 0
        self._peak = (0, 0)


class InFlightBoard:
    """Each worker's count of requests in flight, in memory shared with the master (made before the
    fork): when a worker dies, the master can say how many requests died with it."""

    def __init__(self, slots: int) -> None:
        import multiprocessing

        self._counts = multiprocessing.RawArray("l", slots)

    def free_slot(self, taken: set[int]) -> int:
        for slot in range(len(self._counts)):
            if slot not in taken:
                return slot
        return len(self._counts) - 1  # more live workers than slots: share the last one

    def writer(self, slot: int) -> Any:
        """The worker's publish function: one shared-memory store per request start and end."""
        counts = self._counts

        def publish(count: int) -> None:
            counts[slot] = count

        return publish

    def total(self) -> int:
        """Requests in flight in every worker (read by the metrics scrape)."""
        return sum(self._counts)

    def take(self, slot: int) -> int:
        """The dead worker's last count, and its slot cleared for the next one."""
        count, self._counts[slot] = self._counts[slot], 0
        return count
