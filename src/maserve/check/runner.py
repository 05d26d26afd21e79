"""Runs the checks in the spec's order against one target and always cleans up what it started."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from maserve.check import image
from maserve.check.accelerator import check_accelerator, image_accelerator
from maserve.check.keepalive import check_keepalive
from maserve.check.load import Call
from maserve.check.metrics import check_metrics
from maserve.check.result import FAIL, SKIP, Result, one_line, progress
from maserve.check.samples import Sample, all_samples
from maserve.check.service import URL_HEALTH_WAIT, check_apis, check_logs, wait_healthy
from maserve.check.shutdown import check_shutdown
from maserve.check.streaming import SocketHold, check_streams, check_websockets, judge_hold
from maserve.check.static import check_config, check_url_port, wait_listening
from maserve.check.target import Options, Target, from_url, start_command
from maserve.config import ConfigError, ModelConfig, load_config, read_config
from maserve.validate import EVENT_STREAM

__all__ = ["Options", "run"]

# The image checks (boot, size, user, batch-deps, secrets) are only reported for --image: the
# reports of URL and --cmd targets keep exactly the seven checks their consumers (and tests) expect.
# Set this to True to list them as SKIP there instead.
IMAGE_ROWS_FOR_OTHER_TARGETS = False


def run(options: Options) -> list[Result]:
    results = [check_config(options.config_path)]
    config = _config(options)
    raw = _raw(options)
    health_path = config.health_url if config else str((raw.get("health") or {}).get("url", "/health"))
    if options.image:
        return _run_image(options, results, config, raw, health_path)
    target = start_command(options) if options.cmd else from_url(options.url or "", options.https)
    results += _service_checks(target, options, config, raw, health_path)
    if IMAGE_ROWS_FOR_OTHER_TARGETS:
        results += image.skipped_image_checks("not an image: use --image")
    return results


def _run_image(options: Options, results: list[Result], config: ModelConfig | None, raw: dict[str, Any],
               health_path: str) -> list[Result]:
    """Read the image (inspect + one probe container), then run it and check it as a service."""
    engine = options.engine or image.default_engine()
    assert options.image is not None
    progress(f"inspecting {options.image} with {engine}")
    try:
        info = image.inspect_image(engine, options.image)
    except image.EngineError as exc:
        reason = f"the image could not be inspected: {exc}"
        return (results + [Result("port", FAIL, one_line(reason))]
                + [Result(n, SKIP, reason) for n in _http_rows(config)] + image.skipped_image_checks(reason))
    progress("reading the boot file, batch tools, secret-like files and writable paths from the image")
    try:
        probe = image.probe_image(engine, options.image, str((info.get("Config") or {}).get("User") or ""))
    except image.EngineError as exc:
        probe = image.Probe(error=one_line(str(exc)))
    static = image.image_checks(info, probe, options)
    options = dataclasses.replace(options, accelerator=image_accelerator(info, probe.gpu_files))
    if options.accelerator != "cpu":
        progress(f"a GPU image ({options.accelerator}): the accelerator row reads where its workers' model runs")
    try:
        target = image.start_image(options, engine)
    except OSError as exc:
        reason = f"{engine} run failed: {exc}"
        return (results + [Result("port", FAIL, one_line(reason))]
                + [Result(n, SKIP, reason) for n in _http_rows(config, options)] + static)
    return results + _service_checks(target, options, config, raw, health_path) + static


def _service_checks(target: Target, options: Options, config: ModelConfig | None, raw: dict[str, Any],
                    health_path: str) -> list[Result]:
    results: list[Result] = []
    try:
        if target.is_command:
            port, reachable = wait_listening(target, options)
        else:
            port, reachable = check_url_port(target, options), True
        results.append(port)
        if not reachable:
            return results + [Result(name, SKIP, "the service never listened on the expected port")
                              for name in _http_rows(config, options)]
        results += _http_checks(target, options, config, raw, health_path)
    finally:
        target.cleanup()
    return results


def _http_checks(target: Target, options: Options, config: ModelConfig | None, raw: dict[str, Any],
                 health_path: str) -> list[Result]:
    limit = options.listen_timeout if target.is_command else URL_HEALTH_WAIT
    health, _ = wait_healthy(target, health_path, limit, _initial_delay(raw))
    out = [health]
    samples: dict[str, list[Sample]] = {}
    stream: Result | None = None
    websocket: Result | None = None
    hold: SocketHold | None = None
    if config is None:
        reason = "no --config given" if options.config is None else "config.json is not valid"
        out.append(Result("apis", SKIP, f"{reason}: the apis are unknown"))
    else:
        samples, problems = all_samples(options.model_dir, config.apis)
        out.append(check_apis(target, config.apis, samples, problems))
        stream = check_streams(target, config.apis, samples)
        out += [stream] if stream is not None else []
        websocket, hold = check_websockets(target, config.apis, samples, options)
    flat = [s for group in samples.values() for s in group if s.method != "WEBSOCKET"]
    out.append(check_logs(target, health_path, flat[0] if flat else None))
    if options.accelerator not in (None, "cpu"):  # a GPU image: where its workers' model runs
        out.append(check_accelerator(target))
    out.append(check_metrics(target, options.metrics_path))
    out.append(check_keepalive(target, health_path, options.keepalive_seconds))
    calls = [Call(s.method, s.url, s.body, s.headers) for s in flat] or [Call("GET", health_path, None, {})]
    terminated = threading.Event()
    if hold is not None:
        hold.start(terminated)
    out.append(check_shutdown(target, options, calls, on_terminate=terminated.set))
    if websocket is not None:
        if hold is not None:
            hold.finish(timeout=10)
        out.insert(out.index(stream) + 1 if stream is not None else 2, judge_hold(websocket, hold))
    return out


def _http_rows(config: ModelConfig | None, options: Options | None = None) -> list[str]:
    """The rows of the HTTP checks: the stream and websocket rows only where config.json has such apis,
    the accelerator row only for a GPU image."""
    apis = config.apis if config is not None else ()
    extra = ["stream"] if any(a.response_content_type == EVENT_STREAM and not a.websocket for a in apis) else []
    extra += ["websocket"] if any(a.websocket for a in apis) else []
    gpu = ["accelerator"] if options is not None and options.accelerator not in (None, "cpu") else []
    return ["health", "apis", *extra, "logs", *gpu, "metrics", "keepalive", "shutdown"]


def _config(options: Options) -> ModelConfig | None:
    path = options.config_path
    if path is None:
        return None
    try:
        return load_config(path)
    except ConfigError:
        return None


def _raw(options: Options) -> dict[str, Any]:
    path = options.config_path
    try:
        return read_config(path) if path else {}
    except ConfigError:
        return {}


def _initial_delay(raw: dict[str, Any]) -> float | None:
    value = (raw.get("health") or {}).get("initial_delay_seconds")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
