"""`metric.metrics_manager.MetricsManager`, the platform's metrics helper, as scripts use it:

    if self.model_name + "_LatencyInference" in MetricsManager.metrics:
        MetricsManager.metrics[self.model_name + "_LatencyInference"].update(elapsed_ms)

Every name is taken (the platform registers its latency metrics for each model; a script's own
names work too), and each `update(value)` is recorded per worker: count, sum, last value. They are
kept in memory only until maserve serves metrics (`MetricsManager.snapshot()` reads them).
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
        self._lock = threading.Lock()

    def update(self, value: Any = 1) -> None:
        number = float(value)
        with self._lock:
            self.count += 1
            self.total += number
            self.last = number


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
