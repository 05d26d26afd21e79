"""Where the model runs (maserve.accelerator, maserve.onnx) on a machine without a GPU, which is
what CI has: GPU counting from nvidia-smi's listing, device nodes and CUDA_VISIBLE_DEVICES; the
worker → GPU mapping; the default worker count; onnxruntime sessions that fall back to the CPU
with a log line; MASERVE_REQUIRE_ACCELERATOR refusing a real server's start; and the
`accelerator` row of `maserve check` read from a real server's output. The GPU side is
bench/gpu.py's, on a GPU machine."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, request, start_server

from maserve import accelerator
from maserve.accelerator import Inventory, default_workers, place, place_worker, visible_gpus, worker_gpu
from maserve.check.accelerator import judge, records
from maserve.check.result import FAIL, PASS, WARN
from maserve.onnx import AcceleratorUnavailable, onnx_session
from maserve.settings import Settings, SettingsError

IRIS_DIR = ROOT / "examples" / "iris"
IRIS_MODEL = IRIS_DIR / "model.onnx"
SMI_TWO = """GPU 0: NVIDIA H200 (UUID: GPU-6a1c3f2e-0000-0000-0000-000000000000)
GPU 1: NVIDIA H200 (UUID: GPU-6a1c3f2e-0000-0000-0000-000000000001)
"""
SMI_MIG = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)
  MIG 1g.5gb      Device  0: (UUID: MIG-bbbb)
  MIG 1g.5gb      Device  1: (UUID: MIG-cccc)
"""
TWO_GPUS = Inventory(("0", "1"), "nvidia-smi -L", "onnxruntime-gpu 1.31.1")
NO_GPU = Inventory((), "/dev/nvidiaN, no nvidia-smi", "onnxruntime-gpu 1.31.1")
CPU_INSTALL = Inventory(("0", "1"), "nvidia-smi -L", None)  # a CPU image on a GPU host

no_gpu_here = pytest.mark.skipif(accelerator.inventory().count > 0, reason="this machine has a GPU: bench/gpu.py")


@pytest.fixture(autouse=True)
def fresh_placement() -> Iterator[None]:
    """place_worker sets the process's placement: each test starts from the in-process default."""
    accelerator._placement = None
    yield
    accelerator._placement = None


# -- counting GPUs --------------------------------------------------------------------------------
def test_gpus_come_from_nvidia_smi_else_the_device_nodes() -> None:
    assert visible_gpus(SMI_TWO, [], None) == ("0", "1")
    assert visible_gpus(SMI_MIG, [], None) == ("0",)  # MIG instances are lines of their GPU
    # No nvidia-smi: /dev/nvidiaN, one per GPU the container got (not nvidiactl, nvidia-uvm, ...).
    nodes = ["null", "nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-modeset", "nvidia-caps"]
    assert visible_gpus(None, nodes, None) == ("0", "1", "2")
    # nvidia-smi there but failing (no usable driver): no GPU, whatever /dev holds.
    assert visible_gpus("", nodes, None) == ()
    assert visible_gpus(None, ["null", "tty"], None) == ()


def test_cuda_visible_devices_narrows_them_as_cuda_does() -> None:
    assert visible_gpus(SMI_TWO, [], "1") == ("1",)
    assert visible_gpus(SMI_TWO, [], "1,0") == ("1", "0")
    assert visible_gpus(SMI_TWO, [], "") == ()  # empty hides every GPU
    assert visible_gpus(SMI_TWO, [], "-1") == ()
    assert visible_gpus(SMI_TWO, [], "0,7,1") == ("0",)  # CUDA stops at the first invalid entry
    assert visible_gpus(SMI_TWO, [], "GPU-6a1c3f2e-0000-0000-0000-000000000001") == (
        "GPU-6a1c3f2e-0000-0000-0000-000000000001",)
    assert visible_gpus(None, ["null"], "0,1") == ()  # naming GPUs does not make them exist


# -- placing workers ------------------------------------------------------------------------------
def test_worker_i_gets_gpu_i_mod_n() -> None:
    assert [worker_gpu(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [worker_gpu(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [worker_gpu(i, 1) for i in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError):
        worker_gpu(0, 0)


def test_placement_per_setting() -> None:
    assert [place("auto", w, TWO_GPUS).device for w in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert [place("cuda", w, TWO_GPUS).device for w in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert {place("cuda:1", w, TWO_GPUS).device for w in range(4)} == {"cuda:1"}
    assert place("CPU", 1, TWO_GPUS).device == "cpu"
    no_gpu = place("auto", 0, NO_GPU)
    assert (no_gpu.device, no_gpu.ordinal, no_gpu.framework_device) == ("cpu", None, "cpu")
    assert no_gpu.reason.startswith("no GPU visible")
    assert "no GPU runtime installed" in place("auto", 0, CPU_INSTALL).reason
    too_far = place("cuda:2", 0, TWO_GPUS)
    assert too_far.device == "cpu" and "GPU 2 is not visible (2 visible" in too_far.reason
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        place("gpu", 0, TWO_GPUS)


def test_a_worker_is_pinned_to_its_gpu() -> None:
    """Its CUDA_VISIBLE_DEVICES names its GPU alone, so every runtime in the process sees it as cuda:0."""
    environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
    placed = place_worker(3, "auto", False, environ, Inventory(("0", "1"), "nvidia-smi -L", "onnxruntime-gpu 1"))
    assert (placed.device, placed.ordinal, placed.framework_device) == ("cuda:1", 0, "cuda:0")
    assert environ["CUDA_VISIBLE_DEVICES"] == "1"
    environ = {}
    placed = place_worker(0, "auto", False, environ, Inventory(("GPU-x", "GPU-y"), "nvidia-smi -L", "torch 2+cu1"))
    assert environ == {"CUDA_VISIBLE_DEVICES": "GPU-x"} and placed.framework_device == "cuda:0"
    environ = {}
    placed = place_worker(1, "auto", False, environ, NO_GPU)
    assert placed.device == "cpu" and environ == {}  # nothing to pin
    with pytest.raises(AcceleratorUnavailable, match="worker 1 would run on the CPU: no GPU visible"):
        place_worker(1, "cuda", True, {}, NO_GPU)


def test_default_workers_on_gpus_are_two_per_gpu_at_most_the_cores() -> None:
    assert default_workers("auto", 16, NO_GPU) == 16
    assert default_workers("auto", 16, TWO_GPUS) == 4
    assert default_workers("auto", 3, TWO_GPUS) == 3
    assert default_workers("cuda:1", 16, TWO_GPUS) == 2  # every worker on one GPU
    assert default_workers("cpu", 16, TWO_GPUS) == 16
    assert default_workers("auto", 16, CPU_INSTALL) == 16  # nothing installed uses the GPUs


def test_settings_take_the_device_and_refuse_a_bad_one() -> None:
    base = {"MASERVE_MODEL_DIR": str(IRIS_DIR)}
    assert Settings.load(base).device == "auto"
    assert Settings.load({**base, "MASERVE_DEVICE": "cuda:1"}).device == "cuda:1"
    with pytest.raises(SettingsError, match="MASERVE_DEVICE must be auto, cpu, cuda or cuda:N, got 'gpu0'"):
        Settings.load({**base, "MASERVE_DEVICE": "gpu0"})
    with pytest.raises(SettingsError, match="MASERVE_REQUIRE_ACCELERATOR=1 and the model cannot run on a GPU: "
                       "MASERVE_DEVICE=cpu"):
        Settings.load({**base, "MASERVE_DEVICE": "cpu", "MASERVE_REQUIRE_ACCELERATOR": "1"})
    # Explicit workers win over any device-based default.
    assert Settings.load({**base, "MASERVE_WORKERS": "3"}).workers == 3


# -- onnxruntime sessions -------------------------------------------------------------------------
def _iris_answer(session: object) -> np.ndarray:
    features = np.array([[6.3, 2.5, 4.9, 1.5]], dtype=np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: features})  # type: ignore[attr-defined]
    return np.asarray(outputs[-1])


def _accelerator_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "maserve.accelerator"]


@no_gpu_here
def test_a_session_on_the_cpu_says_nothing_more(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="maserve.accelerator")
    for device in (None, "auto", "cpu"):
        caplog.clear()
        session = onnx_session(IRIS_MODEL, device=device)
        assert session.get_providers() == ["CPUExecutionProvider"]
        assert _iris_answer(session).size > 0
        assert [r.levelno for r in _accelerator_records(caplog)] == [logging.DEBUG]


@no_gpu_here
def test_cuda_asked_for_without_a_gpu_falls_back_to_the_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    cpu_answer = _iris_answer(onnx_session(IRIS_MODEL, device="cpu"))
    for device, reason in (("cuda", "no GPU visible"), ("cuda:0", "CUDAExecutionProvider")):
        caplog.clear()
        session = onnx_session(IRIS_MODEL, device=device, require=False)
        assert session.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_allclose(_iris_answer(session), cpu_answer)  # it serves, on the CPU
        (line,) = [r for r in _accelerator_records(caplog) if r.levelno == logging.WARNING]
        message = line.getMessage()
        assert message.startswith(f"onnxruntime session for model.onnx on the CPU: {device} was asked for, but ")
        assert reason in message, message
        assert line.fields["fallback"] is True and line.fields["providers"] == "CPUExecutionProvider"


@no_gpu_here
def test_require_accelerator_turns_the_fallback_into_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AcceleratorUnavailable, match="model.onnx would run on the CPU: no GPU visible"):
        onnx_session(IRIS_MODEL, device="cuda", require=True)
    with pytest.raises(AcceleratorUnavailable, match="has no CUDAExecutionProvider"):
        onnx_session(IRIS_MODEL, device="cuda:0", require=True)
    monkeypatch.setenv("MASERVE_REQUIRE_ACCELERATOR", "1")  # the default of `require`
    with pytest.raises(AcceleratorUnavailable):
        onnx_session(IRIS_MODEL, device="cuda")
    with pytest.raises(AcceleratorUnavailable, match="no GPU visible"):
        onnx_session(IRIS_MODEL)  # this worker's device: the CPU here
    # A session the model itself puts on the CPU (a small side model) is its choice, not a fallback.
    assert onnx_session(IRIS_MODEL, device="cpu").get_providers() == ["CPUExecutionProvider"]


# -- a real server --------------------------------------------------------------------------------
@no_gpu_here
def test_a_server_asked_for_cuda_without_a_gpu_serves_on_the_cpu_and_says_so(tmp_path: Path) -> None:
    server = start_server(tmp_path, IRIS_DIR, env={"MASERVE_DEVICE": "cuda"})
    try:
        conn = server.connect()
        reply = request(conn, "POST", "/", (IRIS_DIR / "samples" / "request.json").read_bytes(),
                        {"Content-Type": "application/json"})
        conn.close()
        expected = json.loads((IRIS_DIR / "samples" / "expected.json").read_text())["request.json"]
        assert reply.status == 200 and reply.json() == expected
        lines = server.wait_log(lambda r: r.get("logger") == "maserve.accelerator" and "worker" in r)
        assert sorted(r["worker"] for r in lines) == [0, 1]
        for line in lines:
            assert line["level"] == "WARNING" and line["device"] == "cpu" and line["gpus_visible"] == 0
            assert "the model runs on the CPU: no GPU visible" in line["message"], line
            assert "MASERVE_REQUIRE_ACCELERATOR=1 refuses to start instead" in line["message"]
        sessions = [r for r in server.log_records() if r.get("fallback")]
        assert len(sessions) == 2 and all("cuda was asked for" in r["message"] for r in sessions)
        # What `maserve check --image` says of a GPU image on a machine without a GPU.
        row = judge(records(server.logs()))
        assert (row.verdict, row.evidence.split(" (")[0]) == (WARN, "no GPU visible: runs on CPU"), row
    finally:
        server.stop()


@no_gpu_here
def test_require_accelerator_makes_a_real_start_fail_with_the_reason(tmp_path: Path) -> None:
    server = start_server(tmp_path, IRIS_DIR, env={"MASERVE_REQUIRE_ACCELERATOR": "1"}, wait=False)
    try:
        assert server.proc.wait(timeout=60) == 2
        logs = server.logs()
        assert ("maserve: refusing to start: MASERVE_REQUIRE_ACCELERATOR=1 and the model cannot run on a GPU: "
                "no GPU visible") in logs, logs
        assert "model loaded" not in logs  # refused before any worker started
    finally:
        server.stop()


@no_gpu_here
def test_the_check_row_reads_text_logs_too(tmp_path: Path) -> None:
    server = start_server(tmp_path, IRIS_DIR, env={"MASERVE_LOG_FORMAT": "text", "MASERVE_WORKERS": "1"})
    try:
        server.wait_for_log("maserve.accelerator")
        found = records(server.logs())
        assert found and found[0]["device"] == "cpu" and found[0]["gpus_visible"] == "0", found
        assert found[0]["message"].startswith("worker 0: the model runs on the CPU: no GPU visible")
        row = judge(found)
        assert row.verdict == WARN and row.evidence.startswith("no GPU visible: runs on CPU"), row
    finally:
        server.stop()


def test_the_check_row_verdicts() -> None:
    """The row's rules on the lines workers write (the fields maserve.accelerator logs)."""
    worker = {"logger": "maserve.accelerator", "message": "worker 0: the model runs on cuda:0", "worker": 0,
              "device": "cuda:0", "gpus_visible": 2}
    session = {"logger": "maserve.accelerator", "message": "onnxruntime session for model.onnx on cuda:0",
               "device": "cuda:0", "providers": "CUDAExecutionProvider,CPUExecutionProvider"}
    fallback = {"logger": "maserve.accelerator", "device": "cpu", "providers": "CPUExecutionProvider",
                "fallback": True, "message": "onnxruntime session for model.onnx on the CPU: cuda:0 was asked for, "
                "but onnxruntime could not load CUDAExecutionProvider on cuda:0"}
    second = {**worker, "worker": 1, "device": "cuda:1"}
    row = judge([worker, session, second, {**session, "device": "cuda:1"}])
    assert row.verdict == PASS and "2 worker(s) on cuda:0, cuda:1 of 2 GPU(s)" in row.evidence
    assert "CUDAExecutionProvider, CPUExecutionProvider" in row.evidence
    assert judge([worker]).verdict == PASS  # a torch model: no session line, the worker is on its GPU
    row = judge([worker, fallback])
    assert row.verdict == FAIL and "2 GPU(s) visible, yet the model runs on the CPU" in row.evidence
    assert "could not load CUDAExecutionProvider" in row.evidence
    assert judge([]).verdict == WARN


def test_a_gpu_image_is_known_by_its_label_or_what_it_holds() -> None:
    from maserve.check.accelerator import gpu_run_options, image_accelerator

    assert image_accelerator({"Config": {"Labels": {"maserve.accelerator": "cuda"}}}, []) == "cuda"
    assert image_accelerator({"Config": {"Labels": None}}, []) == "cpu"  # the CPU image: no row
    held = ["/opt/venv/lib/python3.11/site-packages/onnxruntime_gpu-1.31.1.dist-info"]
    assert image_accelerator({"Config": {}}, held) == "cuda"  # built otherwise, onnxruntime-gpu inside
    # The host's GPUs go to a GPU image only where the host has some; without, it runs as on a CPU machine.
    if accelerator.inventory().count == 0:
        assert gpu_run_options("docker", "cuda") == [] and gpu_run_options("podman", "cuda") == []
    else:
        assert gpu_run_options("docker", "cuda") == ["--gpus", "all"]
    assert gpu_run_options("podman", "cpu") == []


@no_gpu_here
def test_the_gpu_benchmark_says_there_is_no_gpu_and_shows_its_plan() -> None:
    """bench/gpu.py's paths that need no GPU (its GPU run is for a GPU machine)."""
    import subprocess
    import sys

    script = str(ROOT / "bench" / "gpu.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "no GPU visible (nvidia-smi -L lists none)" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, script, "--dry-run"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "GPUs (nvidia-smi -L): none visible" in done.stdout
    assert "would run: in process on cuda:0; served, MASERVE_DEVICE=cuda; served, MASERVE_DEVICE=cpu" in done.stdout
