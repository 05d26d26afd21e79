"""`metric.metrics_manager.MetricsManager`, the platform's metrics helper, as scripts use it:

    if self.model_name + "_LatencyInference" in MetricsManager.metrics:
        MetricsManager.metrics[self.model_name + "_LatencyInference"].update(elapsed_ms)

Every name is taken (the platform registers its latency metrics for each model; a script's own
names work too), and each `update(value)` is recorded per worker: count, sum, last value
(`MetricsManager.snapshot()` reads them). When maserve serves metrics, each worker's metrics
flush drains what was recorded since the last one (`MetricsManager.drain()`) into Prometheus
series summed over the workers (maserve.metrics).
"""

from __future__ import annotations

import threading
from typing import Any, Iterator


class Metric:
    """One recorded series: how many updates, their sum and the last value."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.total = 0.0
        self.last: float | None = None
        self._pending = (0, 0.0)  # (count, sum) since the last drain
        self._lock = threading.Lock()

    def update(self, value: Any = 1) -> None:
        number = float(value)
        with self._lock:
            self.count += 1
            self.total += number
            self.last = number
            self._pending = (self._pending[0] + 1, self._pending[1] + number)

    def drain(self) -> tuple[int, float, float | None]:
        """(count, sum) recorded since the last drain, and the last value."""
        with self._lock:
            (count, total), self._pending = self._pending, (0, 0.0)
            return count, total, self.last


class _Metrics(dict):  # type: ignore[type-arg]
    """A dict in which every string name is present: a Metric is made on first use."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) or super().__contains__(name)

    def __missing__(self, name: str) -> Metric:
        metric = self[name] = Metric(name)
        return metric

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))


class MetricsManager:
    metrics: _Metrics = _Metrics()

    @classmethod
    def snapshot(cls) -> dict[str, dict[str, float | int | None]]:
        return {name: {"count": m.count, "sum": m.total, "last": m.last} for name, m in dict(cls.metrics).items()}

    @classmethod
    def drain(cls) -> list[tuple[str, int, float, float | None]]:
        """(name, count, sum, last) of each metric updated since the last drain."""
        drained = ((name, *metric.drain()) for name, metric in dict(cls.metrics).items())
        return [entry for entry in drained if entry[1]]
