"""The `metrics` row: Prometheus text at the metrics path, which ModelArts' newer stack can scrape.

WARN when there is none (nothing breaks, the platform simply sees no custom metrics), PASS with the
series and family counts when the text parses, FAIL when it does not: a scraper would drop it all.
"""

from __future__ import annotations

import http.client

from maserve.check.client import fetch
from maserve.check.result import FAIL, PASS, WARN, Result, one_line
from maserve.check.target import Target

DEFAULT_PATH = "/metrics"


def check_metrics(target: Target, path: str = DEFAULT_PATH) -> Result:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        reply = fetch(target.endpoint, "GET", path, timeout=10)
    except (OSError, http.client.HTTPException) as exc:
        return Result("metrics", WARN, one_line(f"GET {path}: no answer ({type(exc).__name__})"))
    if reply.status != 200:
        return Result("metrics", WARN, f"GET {path} → {reply.status}: no Prometheus metrics for the platform to scrape")
    try:
        families = list(text_string_to_metric_families(reply.body.decode("utf-8")))
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        return Result("metrics", FAIL, one_line(f"GET {path} does not parse as Prometheus text: {exc}"))
    series = sum(len(family.samples) for family in families)
    if not families:
        return Result("metrics", WARN, f"GET {path} → 200 but no metrics in it")
    return Result("metrics", PASS, f"GET {path}: {series} series in {len(families)} families (Prometheus text)")
