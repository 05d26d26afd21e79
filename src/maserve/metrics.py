"""Prometheus metrics at MASERVE_METRICS_PATH (default /metrics), correct across gunicorn's workers.

Each worker is its own process, so a counter kept in memory would show only the worker that
happens to answer the scrape. prometheus-client's multiprocess mode keeps every worker's values in
memory-mapped files of one directory (made empty at each server start, before the fork), and the
scrape sums them; when a worker dies the master marks its files dead, so counters keep what it
counted (they never go backwards) and gauges of live processes drop it. What is cheaper to read
at scrape time than to count per request is read then: requests in flight (the master's in-flight
board), readiness, and each process's CPU and memory from /proc.
"""

from __future__ import annotations

import os
import shutil
import sys
from bisect import bisect_left
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# From a 1 ms model to a 10 s one, and the platform's 60 s limit.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
FLUSH_SECONDS = 1.0  # how far a worker's counts may lag in a scrape another worker answers
OTHER_PATH = "other"  # the api label of requests to no api (404s): paths are not labels
SCRIPT_METRICS_MODULE = "model_service.metric"  # MetricsManager, loaded only for platform scripts
MAX_SCRIPT_METRICS = 100  # distinct MetricsManager names exposed per worker: labels stay bounded


def prepare_directory() -> Path:
    """In the master, before prometheus_client is imported and before the fork: an empty directory
    for this server's values ($PROMETHEUS_MULTIPROC_DIR if set, emptied; else a new one)."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        path = Path(given)
        if path.is_dir():
            for entry in path.glob("*.db"):
                entry.unlink()
        else:
            path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="maserve-metrics-"))
        os.environ[METRICS_DIR_ENV] = str(path)
    return path


def mark_dead(pid: int) -> None:
    """In the master when a worker exits: its live gauges go, its counters stay."""
    if os.environ.get(METRICS_DIR_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_directory() -> None:
    path = os.environ.get(METRICS_DIR_ENV)
    if path and Path(path).name.startswith("maserve-metrics-"):
        shutil.rmtree(path, ignore_errors=True)


class Metrics:
    """One worker's metrics: what the request path records, and the scrape."""

    def __init__(self, apis: Iterable[str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.apis = frozenset(apis)
        self.requests = Counter("maserve_requests", "Requests answered, by api, method and status.",
                                ["api", "method", "status"])
        self.duration = Histogram("maserve_request_duration_seconds", "Time from the request's headers to its "
                                  "answer (a stream: to its end), by api.", ["api"], buckets=DURATION_BUCKETS)
        self.batch_size = Histogram("maserve_batch_size", "Requests per batch handed to predict_batch.",
                                    buckets=BATCH_BUCKETS)
        self.load_seconds = Gauge("maserve_model_load_seconds", "Time each worker took to load and warm up "
                                  "the model.", multiprocess_mode="liveall")
        self.streams = Counter("maserve_streams", "SSE streams ended, by api and outcome (ok, error, client_gone).",
                               ["api", "outcome"])
        self.first_event = Histogram("maserve_stream_first_event_seconds", "Time from a stream's request to its "
                                     "first event, by api.", ["api"], buckets=DURATION_BUCKETS)
        self._script: tuple[Any, Any, Any] | None = None  # made on a script's first MetricsManager update
        self._script_names: set[str] = set()
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._tally: dict[tuple[str, str, int], int] = {}  # counted since the last flush
        self._durations: dict[str, list[float]] = {}  # api → per-bucket counts (+Inf last), then the sum
        self.in_flight: Callable[[], int] | None = None  # set by the worker: the board's sum
        self.ready: Callable[[], bool] | None = None

    def start_flushing(self, loop: Any, every: float = FLUSH_SECONDS) -> None:
        """Flush once a `every` seconds on the worker's loop (and once more at its shutdown)."""
        def tick() -> None:
            try:
                self.flush()
            finally:
                loop.call_later(every, tick)

        loop.call_later(every, tick)

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request in plain memory (about 0.5 us); `flush` (every second, and
        before a scrape) adds the counts to the shared files, where each addition takes a lock and
        a write: three of them per request cost about 4 us, 3% of a small model's request."""
        api = path if path in self.apis else OTHER_PATH
        key = (api, method, status)
        tally = self._tally
        tally[key] = tally.get(key, 0) + 1
        buckets = self._durations.get(api)
        if buckets is None:
            buckets = self._durations[api] = [0.0] * (len(DURATION_BUCKETS) + 2)
        buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1  # Prometheus' le: the first bound >= it
        buckets[-1] += seconds

    def flush(self) -> None:
        """Add what was counted since the last flush to the shared files."""
        tally, self._tally = self._tally, {}
        for key, count in tally.items():
            child = self._request_children.get(key)
            if child is None:
                child = self._request_children[key] = self.requests.labels(key[0], key[1], str(key[2]))
            child.inc(count)
        durations, self._durations = self._durations, {}
        for api, buckets in durations.items():
            child = self.duration.labels(api)
            # prometheus-client has no public call to add n observations to a bucket: its own
            # per-bucket values (the same ones observe() adds to), checked by tests/test_metrics.py.
            for value, count in zip(child._buckets, buckets[:-1]):
                if count:
                    value.inc(count)
            child._sum.inc(buckets[-1])
        self._flush_script_metrics()

    def _flush_script_metrics(self) -> None:
        """A platform script's `MetricsManager.metrics[name].update(value)`s since the last flush.
        Read from sys.modules so that serving a maserve model never imports the shim."""
        module = sys.modules.get(SCRIPT_METRICS_MODULE)
        if module is None:
            return
        drained = module.MetricsManager.drain()
        if not drained:
            return
        if self._script is None:
            from prometheus_client import Counter, Gauge

            self._script = (
                Counter("maserve_script_metric_updates", "MetricsManager.metrics[name].update() calls of a "
                        "ModelArts script, by name.", ["name"]),
                Gauge("maserve_script_metric_sum", "Sum of the values given to update(), by name.", ["name"],
                      multiprocess_mode="sum"),
                Gauge("maserve_script_metric_last", "The last value given to update() in any worker, by name.",
                      ["name"], multiprocess_mode="mostrecent"),
            )
        updates, total, last = self._script
        for name, count, value_sum, last_value in drained:
            if name not in self._script_names:
                if len(self._script_names) >= MAX_SCRIPT_METRICS:
                    continue
                self._script_names.add(name)
            updates.labels(name).inc(count)
            total.labels(name).inc(value_sum)
            if last_value is not None:
                last.labels(name).set(last_value)

    def render(self) -> bytes:
        """The scrape: every worker's values summed, and what is read now."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.flush()  # this worker's latest; the others flush within a second
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_NowCollector(self))
        return generate_latest(registry)


class _NowCollector:
    """What the scrape reads at its own time instead of counting per request."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        metrics = self._metrics
        if metrics.in_flight is not None:
            yield GaugeMetricFamily("maserve_requests_in_flight", "Requests being read, run or answered, all "
                                    "workers.", value=metrics.in_flight())
        if metrics.ready is not None:
            yield GaugeMetricFamily("maserve_ready", "1 when every worker has loaded the model (what /health "
                                    "says).", value=1 if metrics.ready() else 0)
        cpu = CounterMetricFamily("maserve_process_cpu_seconds", "CPU time (user + system) of the master and "
                                  "each worker.", labels=["role", "pid"])
        memory = GaugeMetricFamily("maserve_process_resident_memory_bytes", "Resident memory of the master and "
                                   "each worker.", labels=["role", "pid"])
        for role, pid in _server_processes():
            found = _proc_stat(pid)
            if found is not None:
                cpu.add_metric([role, str(pid)], found[0])
                memory.add_metric([role, str(pid)], found[1])
        yield cpu
        yield memory


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _server_processes() -> list[tuple[str, int]]:
    """The master (this worker's parent) and its workers."""
    master = os.getppid()
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            workers = [int(p) for p in f.read().split()]
    except OSError:
        workers = [os.getpid()]
    return [("master", master)] + [("worker", pid) for pid in workers]


def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, int(fields[21]) * _PAGE
