"""onnxruntime sessions sized for maserve's process model, on this worker's device.

A session asked to run on a GPU is made with the CUDA execution provider first and then checked:
onnxruntime falls back to the CPU by itself (a CPU-only package, a driver or library it cannot
load) and only says so on stderr, so `session.get_providers()` decides what is logged. The
fallback is the CPU with a WARNING line naming the reason; MASERVE_REQUIRE_ACCELERATOR=1 makes it
an AcceleratorUnavailable instead, which fails the model's load and so the server's start.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

from maserve import accelerator
from maserve.accelerator import AcceleratorUnavailable
from maserve.logs import fields
from maserve.settings import THREADS_ENV

log = logging.getLogger("maserve.accelerator")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# cuDNN's convolution algorithm from its heuristics, not from timing every algorithm (onnxruntime's
# EXHAUSTIVE default): a batching server sees a new batch size, so a new input shape, now and
# then, and exhaustive search makes each new shape's first batch pay for benchmarking every
# convolution. bench/gpu.py measures both.
CUDA_OPTIONS: dict[str, Any] = {"cudnn_conv_algo_search": "HEURISTIC"}

__all__ = ["AcceleratorUnavailable", "onnx_session"]


def intra_op_threads() -> int:
    """MASERVE_INTRA_OP_THREADS as `maserve serve` resolved it for its workers, else 1."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def onnx_session(path: Path | str, device: str | None = None, require: bool | None = None) -> ort.InferenceSession:
    """A session with one intra-op thread (gunicorn already runs a worker per core on the CPU, and a
    thread pool per worker on top only makes the workers fight over the cores; MASERVE_INTRA_OP_THREADS
    changes it, e.g. for one worker with every core: bench/RESULTS.md compares layouts), on `device`:

    - None or "auto": this worker's device (maserve.accelerator: MASERVE_DEVICE, worker i on GPU
      i mod n), the CPU when it has none;
    - "cpu"; "cuda": this worker's GPU (CPU with a warning when there is none); "cuda:N": CUDA
      device N as this process numbers them (a served worker on a GPU sees only its own, cuda:0).

    `require` (default MASERVE_REQUIRE_ACCELERATOR) raises AcceleratorUnavailable instead of
    falling back to the CPU; a session the model puts on "cpu" itself is never refused.
    """
    path = Path(path)
    require = accelerator.require_flag() if require is None else require
    ordinal, label, reason, asked_for_gpu = _target(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads()
    options.inter_op_num_threads = 1
    if ordinal is None:
        if require and not (device is not None and accelerator.check_device(device) == "cpu"):
            raise AcceleratorUnavailable(f"{accelerator.REQUIRE_ENV}=1: {path.name} would run on the CPU: {reason}")
        session = ort.InferenceSession(str(path), options, providers=[CPU])
        if asked_for_gpu:
            _log(session, path, "cpu", logging.WARNING, fallback=f"{label} was asked for, but {reason}")
        else:  # auto on a worker without a GPU: the worker's own line already says so, and why
            _log(session, path, "cpu", logging.DEBUG)
        return session
    available = ort.get_available_providers()
    session = None
    if CUDA not in available:
        reason = (f"onnxruntime {ort.__version__} has no {CUDA} (it offers {', '.join(available)}): the CPU package "
                  "is installed; a GPU image has onnxruntime-gpu (maserve build --accelerator cuda)")
    else:
        _preload_cuda_libraries()
        try:
            session = ort.InferenceSession(str(path), options,
                                           providers=[(CUDA, {"device_id": ordinal, **CUDA_OPTIONS}), CPU])
        except Exception as exc:  # noqa: BLE001 - any failure of the GPU attempt is the CPU's turn
            reason = f"the CUDA session could not be made: {type(exc).__name__}: {exc}"
        else:
            if CUDA in session.get_providers():
                _log(session, path, label, logging.INFO)
                return session
            reason = (f"onnxruntime could not load {CUDA} on cuda:{ordinal} (its own message, on stderr, names the "
                      "library or driver it missed)")
    if require:
        raise AcceleratorUnavailable(f"{accelerator.REQUIRE_ENV}=1: {path.name} would run on the CPU: {reason}")
    if session is None:
        session = ort.InferenceSession(str(path), options, providers=[CPU])
    _log(session, path, "cpu", logging.WARNING, fallback=f"{label} was asked for, but {reason}")
    return session


def _target(device: str | None) -> tuple[int | None, str, str, bool]:
    """(CUDA ordinal or None, the device asked for as the logs name it, why the CPU, whether a GPU
    was asked for: `cuda`, `cuda:N`, or auto in a worker whose MASERVE_DEVICE is one of them)."""
    wanted = accelerator.check_device(device) if device is not None else "auto"
    if wanted == "cpu":
        return None, "cpu", "device='cpu' was asked for", False
    if wanted.startswith("cuda:"):
        return int(wanted.split(":")[1]), wanted, "", True
    placement = accelerator.placement()
    asked_for_gpu = wanted == "cuda" or placement.requested.startswith("cuda")
    if placement.ordinal is None:
        return None, "cuda" if asked_for_gpu else "cpu", placement.reason, asked_for_gpu
    return placement.ordinal, placement.device, "", asked_for_gpu


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu 1.21+ loads CUDA and cuDNN from the nvidia-* wheels in site-packages (no CUDA
    installation in the image); what it prints about missing ones becomes log lines, not stray
    non-JSON output on stdout."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # noqa: BLE001 - then the session creation says what is missing
        printed.write(f"{type(exc).__name__}: {exc}")
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.warning(f"onnxruntime.preload_dlls: {line.strip()}", extra=fields(pid=os.getpid()))


def _log(session: ort.InferenceSession, path: Path, label: str, level: int, fallback: str = "") -> None:
    providers = session.get_providers()
    message = f"onnxruntime session for {path.name} on {label} ({', '.join(providers)})"
    if fallback:
        message = f"onnxruntime session for {path.name} on the CPU: {fallback}"
    values: dict[str, Any] = {"device": label, "providers": ",".join(providers), "model_file": path.name,
                              "pid": os.getpid()}
    if fallback:
        values["fallback"] = True
    log.log(level, message, extra=fields(**values))
