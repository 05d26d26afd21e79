"""Run-time settings: environment variables (MASERVE_*) overridden by CLI flags, checked once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from maserve.accelerator import check_device, default_workers, unavailable_reason

# Read by maserve.onnx in each worker; `maserve serve` sets it to Settings.threads_per_worker.
THREADS_ENV = "MASERVE_INTRA_OP_THREADS"
# ModelArts stops a container 90 s after SIGTERM at most; grace plus drain must fit inside it.
PLATFORM_STOP_BOUND_SECONDS = 90.0
# Where ModelArts' custom-engine flow puts the model package.
PLATFORM_MODEL_DIR = Path("/home/mind/model")


class SettingsError(ValueError):
    """A setting is invalid; the server refuses to start with this message."""


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# The MNIST example of a source checkout (an editable install): the model served when none is named.
BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "examples" / "mnist"


def _default_model_dir() -> Path | None:
    """/home/mind/model (ModelArts' custom-engine flow) when it exists, else the bundled example."""
    for candidate in (PLATFORM_MODEL_DIR, BUNDLED_MODEL_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Settings:
    """Everything the server needs besides the model's own config.json."""

    model_dir: Path | None = field(default_factory=_default_model_dir, metadata={"env": "MASERVE_MODEL_DIR"})
    host: str = field(default="0.0.0.0", metadata={"env": "MASERVE_HOST"})
    port: int = field(default=8080, metadata={"env": "MASERVE_PORT"})
    workers: int = field(default_factory=_default_workers, metadata={"env": "MASERVE_WORKERS"})
    grace_seconds: float = field(default=60.0, metadata={"env": "MASERVE_GRACE_SECONDS"})
    drain_seconds: float = field(default=29.0, metadata={"env": "MASERVE_DRAIN_SECONDS"})
    keepalive_seconds: int = field(default=200, metadata={"env": "MASERVE_KEEPALIVE_SECONDS"})
    max_body_bytes: int = field(default=12 * 1024 * 1024, metadata={"env": "MASERVE_MAX_BODY_BYTES"})
    request_timeout_seconds: float = field(default=60.0, metadata={"env": "MASERVE_REQUEST_TIMEOUT_SECONDS"})
    # A stream's whole length (its first event and each next one are bounded by the request timeout):
    # the platform's end-to-end default.
    stream_timeout_seconds: float = field(default=3600.0, metadata={"env": "MASERVE_STREAM_TIMEOUT_SECONDS"})
    # Batching models (maserve.http.batcher): most requests in one predict_batch call, and the
    # time one batch may take (sized from the model's measured time per request; 0 = no budget).
    max_batch_size: int = field(default=64, metadata={"env": "MASERVE_MAX_BATCH_SIZE"})
    batch_budget_seconds: float = field(default=0.1, metadata={"env": "MASERVE_BATCH_BUDGET_SECONDS"})
    # Batches one worker runs at once, each on its own inference thread from one queue: a
    # compute-bound model's cores kept busy by one worker (no connection imbalance, one model copy).
    batch_threads: int = field(default=1, metadata={"env": "MASERVE_BATCH_THREADS"})
    # onnxruntime threads per session (maserve.onnx); 0: the cores left to each worker (one with a
    # worker per core, every core for MASERVE_WORKERS=1: a compute-bound model's layout, bench/RESULTS.md).
    intra_op_threads: int = field(default=0, metadata={"env": "MASERVE_INTRA_OP_THREADS"})
    log_format: str = field(default="json", metadata={"env": "MASERVE_LOG_FORMAT"})
    tls_cert: Path | None = field(default=None, metadata={"env": "MASERVE_TLS_CERT"})
    tls_key: Path | None = field(default=None, metadata={"env": "MASERVE_TLS_KEY"})
    validate_responses: bool = field(default=False, metadata={"env": "MASERVE_VALIDATE_RESPONSES"})
    # Prometheus text at this path, summed over the workers (maserve.metrics); "" turns it off.
    metrics_path: str = field(default="/metrics", metadata={"env": "MASERVE_METRICS_PATH", "empty": True})
    # The prediction page (maserve.page) under this path; "" turns it off (the built image does).
    page_path: str = field(default="/_maserve/", metadata={"env": "MASERVE_PAGE_PATH", "empty": True})
    # Hostile or broken clients (maserve.http.limits): per worker, 0 = derived from the open-file limit.
    max_connections: int = field(default=0, metadata={"env": "MASERVE_MAX_CONNECTIONS"})
    max_in_flight: int = field(default=0, metadata={"env": "MASERVE_MAX_IN_FLIGHT"})
    # From a request's first byte to the end of its headers; from there to the end of its body (a
    # 12 MB upload at 0.8 Mbit/s meets it); how long a client may read nothing of its answer.
    header_timeout_seconds: float = field(default=30.0, metadata={"env": "MASERVE_HEADER_TIMEOUT_SECONDS"})
    body_timeout_seconds: float = field(default=120.0, metadata={"env": "MASERVE_BODY_TIMEOUT_SECONDS"})
    send_timeout_seconds: float = field(default=60.0, metadata={"env": "MASERVE_SEND_TIMEOUT_SECONDS"})
    # Where the model runs (maserve.accelerator): auto (a GPU when one is visible and a GPU runtime is
    # installed, else the CPU), cpu, cuda (worker i on GPU i mod n), cuda:N. A GPU also changes the
    # default worker count (accelerator.default_workers).
    device: str = field(default="auto", metadata={"env": "MASERVE_DEVICE"})
    # 1: refuse to start, saying why, where the model would fall back to the CPU.
    require_accelerator: bool = field(default=False, metadata={"env": "MASERVE_REQUIRE_ACCELERATOR"})

    @property
    def threads_per_worker(self) -> int:
        """MASERVE_INTRA_OP_THREADS, or the cores divided among the workers and their batch threads
        (at least one)."""
        return self.intra_op_threads or max(1, _default_workers() // (self.workers * self.batch_threads))

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> "Settings":
        """Build from `env` (default os.environ), then `overrides` (CLI flags; None means unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw not in (None, ""):
                values[f.name] = _convert(f.metadata["env"], f.type, raw)
            elif raw == "" and f.metadata.get("empty"):  # set but empty: a meaning of its own ("off")
                values[f.name] = ""
        settings = replace(cls(), **values)
        settings = replace(settings, **{k: v for k, v in (overrides or {}).items() if v is not None})
        settings.check()
        if "workers" not in values and (overrides or {}).get("workers") is None:
            # Not set: a worker per core on the CPU, fewer on GPUs (the field's default knows no device).
            settings = replace(settings, workers=default_workers(settings.device, settings.workers))
        return settings

    def check(self) -> None:
        if self.model_dir is None:
            raise SettingsError(
                f"no model directory: set MASERVE_MODEL_DIR (or --model-dir), or put the model in {PLATFORM_MODEL_DIR}"
            )
        if not (1 <= self.port <= 65535):
            raise SettingsError(f"MASERVE_PORT must be 1-65535, got {self.port}")
        if self.workers < 1:
            raise SettingsError(f"MASERVE_WORKERS must be at least 1, got {self.workers}")
        for name in ("grace_seconds", "drain_seconds", "request_timeout_seconds", "stream_timeout_seconds"):
            if getattr(self, name) < 0:
                raise SettingsError(f"MASERVE_{name.upper()} must not be negative")
        for name in ("max_connections", "max_in_flight"):
            if getattr(self, name) < 0:
                raise SettingsError(f"MASERVE_{name.upper()} must not be negative (0: derived from the open-file limit)")
        for name in ("request_timeout_seconds", "stream_timeout_seconds", "header_timeout_seconds",
                     "body_timeout_seconds", "send_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"MASERVE_{name.upper()} must be above 0")
        total = self.grace_seconds + self.drain_seconds
        if total > PLATFORM_STOP_BOUND_SECONDS - 1:
            raise SettingsError(
                f"MASERVE_GRACE_SECONDS ({self.grace_seconds:g}) + MASERVE_DRAIN_SECONDS ({self.drain_seconds:g}) "
                f"= {total:g} s: a stop could exceed ModelArts' {PLATFORM_STOP_BOUND_SECONDS:g} s bound "
                f"(the sum must be at most {PLATFORM_STOP_BOUND_SECONDS - 1:g} s)"
            )
        if self.max_batch_size < 1:
            raise SettingsError(f"MASERVE_MAX_BATCH_SIZE must be at least 1, got {self.max_batch_size}")
        if self.intra_op_threads < 0:
            raise SettingsError(f"MASERVE_INTRA_OP_THREADS must not be negative (0: the cores per worker), "
                                f"got {self.intra_op_threads}")
        if self.batch_threads < 1:
            raise SettingsError(f"MASERVE_BATCH_THREADS must be at least 1, got {self.batch_threads}")
        if self.batch_budget_seconds < 0:
            raise SettingsError("MASERVE_BATCH_BUDGET_SECONDS must not be negative (0: no budget)")
        if self.keepalive_seconds < 1:
            raise SettingsError("MASERVE_KEEPALIVE_SECONDS must be at least 1")
        if self.max_body_bytes < 1:
            raise SettingsError("MASERVE_MAX_BODY_BYTES must be at least 1")
        if self.metrics_path and not self.metrics_path.startswith("/"):
            raise SettingsError(f"MASERVE_METRICS_PATH must start with / (or be empty: no metrics), got {self.metrics_path!r}")
        if self.page_path and (not self.page_path.startswith("/") or self.page_path == "/" or
                               any(c in self.page_path for c in "?#% ")):
            raise SettingsError(f"MASERVE_PAGE_PATH must be a path below /, such as /_maserve/ (or empty: no page), "
                                f"got {self.page_path!r}")
        if self.log_format not in ("json", "text"):
            raise SettingsError(f"MASERVE_LOG_FORMAT must be 'json' or 'text', got {self.log_format!r}")
        try:
            device = check_device(self.device)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.require_accelerator:
            reason = unavailable_reason(device)
            if reason is not None:
                raise SettingsError(f"MASERVE_REQUIRE_ACCELERATOR=1 and the model cannot run on a GPU: {reason} "
                                    f"(MASERVE_DEVICE={device})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("MASERVE_TLS_CERT and MASERVE_TLS_KEY must be given together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise SettingsError(f"TLS file not found: {path}")


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    if kind.startswith("bool"):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if kind.startswith("Path"):
        return Path(raw)
    return raw
