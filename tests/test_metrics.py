"""GET /metrics: Prometheus text (parsed by prometheus-client's own parser), summed correctly over
gunicorn's workers whichever one answers the scrape, and kept when a worker dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import ECHO_DIR, FIXTURE_MODELS, MASERVE_BIN, child_pids, echo_request, request, start_server


def scrape(server) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value, from a real parse of the text."""
    reply = server.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, sample: str, **labels) -> float:
    return samples.get((sample, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def echo(tmp_path):
    server = start_server(tmp_path, ECHO_DIR)
    yield server
    server.stop()


def test_counts_are_summed_over_the_workers_and_survive_a_worker_death(echo):
    pids = set()
    held = []  # open at once: a worker holding more connections steps back (maserve.http.accept),
    try:       # so both answer; connections opened and closed one by one may all go to one worker
        for i in range(20):
            conn = echo.connect()
            held.append(conn)
            reply = echo_request(conn, 10 + i)
            assert reply.status == 200
            pids.add(reply.json()["pid"])
    finally:
        for conn in held:
            conn.close()
    assert len(pids) == 2
    time.sleep(1.5)  # each worker adds its counts to the shared files once a second
    for _ in range(6):  # whichever worker answers the scrape, the same totals
        samples = scrape(echo)
        assert value(samples, "maserve_requests_total", api="/echo", method="POST", status="200") == 20
        assert value(samples, "maserve_request_duration_seconds_count", api="/echo") == 20
        assert value(samples, "maserve_ready") == 1
        assert {labels for (name, labels) in samples if name == "maserve_model_load_seconds"} == {
            (("pid", str(pid)),) for pid in pids}
        assert value(samples, "maserve_requests_in_flight") >= 1  # the scrape itself
    assert not any("/metrics" in json.dumps(r) for r in echo.log_records())  # not in the access log

    victim = min(child_pids(echo.proc.pid))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (len(child_pids(echo.proc.pid) - {victim}) < 2 or echo.get("/health").status != 200) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    samples = scrape(echo)
    assert value(samples, "maserve_requests_total", api="/echo", method="POST", status="200") == 20  # kept
    loaded = {dict(labels)["pid"] for (name, labels) in samples if name == "maserve_model_load_seconds"}
    assert str(victim) not in loaded and len(loaded) == 2  # the dead worker's gauge is gone
    workers = {dict(labels)["pid"] for (name, labels) in samples
               if name == "maserve_process_resident_memory_bytes" and dict(labels)["role"] == "worker"}
    assert str(victim) not in workers and len(workers) == 2


def test_unknown_paths_share_one_label_and_errors_keep_their_status(echo):
    for path in ("/a", "/b", "/c"):
        assert echo.get(path).status == 404
    time.sleep(1.5)  # the workers' counts reach the shared files within a second
    samples = scrape(echo)
    assert value(samples, "maserve_requests_total", api="other", method="GET", status="404") == 3
    assert not any(dict(labels).get("api") in ("/a", "/b") for (_, labels) in samples)


def test_batches_and_streams_are_measured(tmp_path):
    sums = start_server(tmp_path, FIXTURE_MODELS / "sums", env={"MASERVE_WORKERS": "1"})
    try:
        conn = sums.connect()
        try:
            for i in range(3):
                assert request(conn, "POST", "/", json.dumps({"numbers": [i]}).encode(),
                               {"Content-Type": "application/json"}).status == 200
        finally:
            conn.close()
        samples = scrape(sums)  # one worker: its scrape flushes its own counts first
        assert value(samples, "maserve_request_duration_seconds_count", api="/") == 3
        assert value(samples, "maserve_request_duration_seconds_bucket", api="/", le="+Inf") == 3
        assert value(samples, "maserve_batch_size_count") == 3 and value(samples, "maserve_batch_size_sum") == 3
    finally:
        sums.stop()
    stream = start_server(tmp_path, FIXTURE_MODELS / "stream", env={"MASERVE_WORKERS": "1"})
    try:
        conn = stream.connect()
        try:
            reply = request(conn, "POST", "/stream", json.dumps({"count": 3}).encode(),
                            {"Content-Type": "application/json"})
            assert reply.status == 200 and reply.body.count(b"data:") == 3
        finally:
            conn.close()
        samples = scrape(stream)
        assert value(samples, "maserve_streams_total", api="/stream", outcome="ok") == 1
        assert value(samples, "maserve_stream_first_event_seconds_count", api="/stream") == 1
    finally:
        stream.stop()


def test_an_empty_path_turns_metrics_off(tmp_path):
    server = start_server(tmp_path, ECHO_DIR, env={"MASERVE_METRICS_PATH": ""})
    try:
        assert server.get("/metrics").status == 404
    finally:
        server.stop()


def test_a_path_config_json_declares_is_refused_at_start():
    out = subprocess.run([str(MASERVE_BIN), "serve", str(FIXTURE_MODELS / "multi"), "--port", "1"],
                         env={**os.environ, "MASERVE_METRICS_PATH": "/sum"}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "MASERVE_METRICS_PATH /sum is also a path of config.json" in out.stdout + out.stderr


def test_a_platform_scripts_metrics_manager_updates_are_exposed(tmp_path):
    """`MetricsManager.metrics[name].update(ms)` in a ModelArts script (tests/models/compat_helpers)
    shows in /metrics, summed over both workers once each has flushed (within a second)."""
    import shutil

    directory = tmp_path / "helped"
    shutil.copytree(FIXTURE_MODELS / "compat_helpers", directory, ignore=shutil.ignore_patterns("__pycache__"))
    server = start_server(tmp_path, directory)
    try:
        conn = server.connect()
        for n in range(20):
            reply = request(conn, "POST", "/sum", json.dumps({"numbers": [n]}).encode(),
                            {"Content-Type": "application/json"})
            assert reply.status == 200, reply.body
        conn.close()
        name = "helped_LatencyInference"
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(server)
            if value(samples, "maserve_script_metric_updates_total", name=name) == 20 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        server.stop()
    assert value(samples, "maserve_script_metric_updates_total", name=name) == 20
    assert value(samples, "maserve_script_metric_sum", name=name) > 0  # milliseconds, from both workers
    assert ("maserve_script_metric_last", (("name", name),)) in samples
