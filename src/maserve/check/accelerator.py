"""The `accelerator` row of `maserve check --image` for a GPU image: where the model runs, read from
the lines every worker logs at start (logger maserve.accelerator: its device, and for onnxruntime
the providers its session got), so no endpoint exists just for the checker.

PASS names the device(s) when the model runs on a GPU; WARN "no GPU visible: runs on CPU" when the
container has none (the image must still pass every other row); FAIL when a GPU is visible and the
model runs on the CPU anyway (a CPU onnxruntime, a driver too old for the image's CUDA, a library
missing): a GPU paid for and idle. A CPU image gets no row.
"""

from __future__ import annotations

import json
import re
from typing import Any

from maserve import accelerator
from maserve.check.result import FAIL, PASS, WARN, Result, one_line
from maserve.check.target import Target

LOGGER = "maserve.accelerator"
_TEXT_LINE = re.compile(r"^\S+ +\w+ +maserve\.accelerator: (.*)$")
_TEXT_FIELDS_START = re.compile(r" (?:worker|device)=")  # the first of the fields each line ends with
_TEXT_FIELD = re.compile(r" (\w+)=(\S*)")
# `ENGINE run` options that give the container the host's GPUs (docker: the NVIDIA container
# toolkit's runtime hook; podman: the toolkit's CDI specification).
GPU_RUN_OPTIONS = {"docker": ["--gpus", "all"], "podman": ["--device", "nvidia.com/gpu=all"]}


def image_accelerator(info: dict[str, Any], gpu_files: list[str]) -> str:
    """`cuda` or `cpu`: the image's maserve.accelerator label (maserve build sets it), else `cuda`
    when the image holds onnxruntime-gpu or NVIDIA's CUDA wheels (`gpu_files`, from the probe)."""
    from maserve.build_accelerator import LABEL

    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL):
        return str(labels[LABEL])
    return "cuda" if gpu_files else "cpu"


def gpu_run_options(engine: str, image_accelerator: str | None) -> list[str]:
    """The options that hand a GPU image the host's GPUs, when the host has any; none otherwise
    (then the image runs as on a machine without a GPU, and must still pass)."""
    if image_accelerator != "cuda" or accelerator.inventory().count == 0:
        return []
    return list(GPU_RUN_OPTIONS.get(engine.rsplit("/", 1)[-1], []))


def records(output: str) -> list[dict[str, Any]]:
    """The maserve.accelerator lines of a service's output, JSON or MASERVE_LOG_FORMAT=text."""
    found: list[dict[str, Any]] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and value.get("logger") == LOGGER:
                found.append(value)
            continue
        match = _TEXT_LINE.match(line)
        if match:
            text = match.group(1)
            start = _TEXT_FIELDS_START.search(text)
            cut = start.start() if start else len(text)
            value: dict[str, Any] = {"message": text[:cut], "logger": LOGGER}
            value.update(dict(_TEXT_FIELD.findall(text[cut:])))
            found.append(value)
    return found


def judge(lines: list[dict[str, Any]]) -> Result:
    """The row from the workers' lines (see the module's docstring)."""
    workers = [r for r in lines if "gpus_visible" in r and "worker" in r]
    sessions = [r for r in lines if "providers" in r]
    if not workers and not sessions:
        return Result("accelerator", WARN, "no maserve.accelerator line in the output: where the model runs is "
                      "not known (an older maserve, or not a maserve server)")
    gpus = max((int(r.get("gpus_visible") or 0) for r in workers), default=0)
    fallbacks = [r for r in sessions if str(r.get("fallback", "")).lower() in ("true", "1")]
    on_cpu = [r for r in workers if not str(r.get("device", "")).startswith("cuda")]
    on_gpu = sorted({str(r["device"]) for r in workers if str(r.get("device", "")).startswith("cuda")})
    if fallbacks or on_cpu:
        why = str((fallbacks or on_cpu)[0].get("message", ""))
        if gpus == 0 and not on_gpu:
            return Result("accelerator", WARN, one_line(f"no GPU visible: runs on CPU ({len(workers)} worker(s); {why})"))
        return Result("accelerator", FAIL, one_line(f"{gpus} GPU(s) visible, yet the model runs on the CPU in "
                                                    f"{len(fallbacks) or len(on_cpu)} place(s): {why}"))
    cuda_sessions = [r for r in sessions if "CUDAExecutionProvider" in str(r.get("providers", ""))]
    if cuda_sessions:
        providers = str(cuda_sessions[0]["providers"]).replace(",", ", ")
        return Result("accelerator", PASS, one_line(f"{len(workers)} worker(s) on {', '.join(on_gpu)} of {gpus} GPU(s); "
                                                    f"onnxruntime sessions: {len(cuda_sessions)} with {providers}"))
    return Result("accelerator", PASS, one_line(
        f"{len(workers)} worker(s) on {', '.join(on_gpu)} of {gpus} GPU(s), each process pinned to its GPU "
        "(no onnxruntime session: the model's own runtime, e.g. torch on maserve.accelerator.device())"))


def check_accelerator(target: Target) -> Result:
    return judge(records(target.output()))

