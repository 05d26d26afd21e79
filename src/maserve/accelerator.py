"""Where a worker's model runs: the CPU or one GPU, decided once per worker, logged, and honest.

The master counts the GPUs this container may use, without touching CUDA (a CUDA context made
before gunicorn forks is unusable in the workers): the lines of `nvidia-smi -L` when the driver's
tool is there (the NVIDIA container toolkit mounts it), else the /dev/nvidiaN device nodes (one
per GPU given to the container), narrowed by CUDA_VISIBLE_DEVICES as CUDA narrows it. A GPU is
used only with a GPU runtime installed (onnxruntime-gpu, or PyPI's CUDA wheels that torch depends
on): a CPU image on a GPU host stays on the CPU, saying so.

Each worker, after the fork and before its model loads, takes GPU `slot mod n` (the slot is its
place on the in-flight board, 0 … workers-1, which a replacement worker takes over) and pins its
CUDA_VISIBLE_DEVICES to that one GPU: every runtime in the process (onnxruntime, torch, cupy)
then sees it as cuda:0, makes its context there and nowhere else (an unpinned torch makes one on
GPU 0 in every process), and a model's own `torch.device("cuda")` lands on the right GPU with no
maserve API. `device()` says the same for code that wants it spelled out.

MASERVE_DEVICE: `auto` (default: a GPU when one is visible and a GPU runtime is installed, else
the CPU), `cpu`, `cuda` (this worker's GPU; CPU with a warning when there is none), `cuda:N`
(GPU N, numbered as at start, for every worker). MASERVE_REQUIRE_ACCELERATOR=1 turns each
fallback to the CPU into a refusal to start that says why (maserve.settings, maserve.onnx).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, replace

from maserve.logs import fields

log = logging.getLogger("maserve.accelerator")

DEVICE_ENV = "MASERVE_DEVICE"
REQUIRE_ENV = "MASERVE_REQUIRE_ACCELERATOR"
# The default worker count when the model runs on GPUs (see default_workers for why).
WORKERS_PER_GPU = 2
NVIDIA_SMI_TIMEOUT = 10.0
_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")
_DEVICE_NODE = re.compile(r"nvidia(\d+)")
# The distributions that make a GPU runtime: onnxruntime's CUDA build, NVIDIA's CUDA runtime wheels
# (what torch's CUDA wheel depends on: -cu12 names up to CUDA 12, unsuffixed from CUDA 13 on).
_GPU_DISTRIBUTIONS = ("onnxruntime-gpu", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13",
                      "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11")


class AcceleratorUnavailable(RuntimeError):
    """MASERVE_REQUIRE_ACCELERATOR=1 and the model cannot run on a GPU; the message says why."""


def check_device(text: str) -> str:
    """MASERVE_DEVICE normalised (`CUDA:1` → `cuda:1`); ValueError says what is accepted."""
    value = text.strip().lower()
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu, cuda or cuda:N, got {text!r}")
    return value


def require_flag(environ: MutableMapping[str, str] | None = None) -> bool:
    """MASERVE_REQUIRE_ACCELERATOR as maserve.settings reads booleans (for code without Settings)."""
    raw = (os.environ if environ is None else environ).get(REQUIRE_ENV, "")
    return raw.strip().lower() in ("1", "true", "yes", "on")


# -- what the machine offers --------------------------------------------------------------------
@dataclass(frozen=True)
class Inventory:
    """The GPUs this process may use, and whether anything installed can use them."""

    visible: tuple[str, ...]  # the CUDA_VISIBLE_DEVICES entry of each usable GPU, in CUDA's order
    source: str  # where they were counted, for the log and the reasons
    runtime: str | None  # the GPU runtime installed ("onnxruntime-gpu 1.31.1"); None: a CPU install

    @property
    def count(self) -> int:
        return len(self.visible)


def visible_gpus(smi_listing: str | None, device_nodes: Iterable[str], cuda_visible_devices: str | None) -> tuple[str, ...]:
    """The GPUs CUDA would number 0 … n-1 in this process, as CUDA_VISIBLE_DEVICES entries.

    `smi_listing` is `nvidia-smi -L`'s output (None: no nvidia-smi; "" when it failed: no usable
    driver), else the GPUs are the /dev/nvidiaN nodes among `device_nodes`. CUDA_VISIBLE_DEVICES,
    when set, keeps its entries up to the first invalid one, as CUDA does ("" and "-1" hide all)."""
    if smi_listing is not None:
        physical = sum(1 for line in smi_listing.splitlines() if line.startswith("GPU "))
    else:
        physical = sum(1 for name in device_nodes if _DEVICE_NODE.fullmatch(name))
    if cuda_visible_devices is None:
        return tuple(str(i) for i in range(physical))
    entries: list[str] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        valid = (entry.isdigit() and int(entry) < physical) or (entry.startswith(("GPU-", "MIG-")) and physical > 0)
        if not valid or entry in entries:
            break
        entries.append(entry)
    return tuple(entries[:physical])


def installed_gpu_runtime() -> str | None:
    """The first GPU runtime installed (see _GPU_DISTRIBUTIONS), or a torch built for CUDA."""
    for name in _GPU_DISTRIBUTIONS:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return f"torch {torch}" if "+cu" in torch else None  # a CUDA index's build, CUDA inside


@functools.cache
def inventory() -> Inventory:
    """This machine's, counted once (in the master: the workers inherit it)."""
    smi = shutil.which("nvidia-smi")
    listing: str | None = None
    if smi is not None:
        try:
            done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=False)
            listing = done.stdout if done.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            listing = ""
    try:
        nodes = os.listdir("/dev")
    except OSError:
        nodes = []
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    source = "nvidia-smi -L" if listing is not None else "/dev/nvidiaN, no nvidia-smi"
    if cuda_visible is not None:
        source += f", CUDA_VISIBLE_DEVICES={cuda_visible!r}"
    return Inventory(visible_gpus(listing, nodes, cuda_visible), source, installed_gpu_runtime())


# -- where one worker runs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """One worker's device. `device` numbers the GPUs as at start (what the logs say); `ordinal`
    is the CUDA device number inside the process (0 once the worker is pinned to its GPU)."""

    device: str  # "cpu" or "cuda:N"
    ordinal: int | None  # None on the CPU
    requested: str  # MASERVE_DEVICE
    gpus: int  # GPUs visible at start
    reason: str = ""  # why the CPU, when it is the CPU
    worker: int = 0

    @property
    def cuda(self) -> bool:
        return self.ordinal is not None

    @property
    def framework_device(self) -> str:
        """What to hand torch & co. in this process: `cuda:0` in a served worker, `cpu`."""
        return f"cuda:{self.ordinal}" if self.ordinal is not None else "cpu"


def worker_gpu(worker: int, gpus: int) -> int:
    """Worker i's GPU among n: i mod n, so the workers spread evenly and a replacement worker
    (it takes its predecessor's slot) gets the same GPU back."""
    if gpus < 1:
        raise ValueError("no GPU to assign")
    return worker % gpus


def place(requested: str, worker: int, found: Inventory) -> Placement:
    """Where worker `worker` runs for MASERVE_DEVICE=`requested` on a machine with `found`."""
    requested = check_device(requested)
    gpus = found.count
    if requested == "cpu":
        return Placement("cpu", None, requested, gpus, f"{DEVICE_ENV}=cpu", worker)
    if gpus == 0:
        return Placement("cpu", None, requested, gpus, f"no GPU visible (looked at {found.source})", worker)
    if found.runtime is None:
        return Placement("cpu", None, requested, gpus, f"{gpus} GPU(s) visible but no GPU runtime installed "
                         "(onnxruntime-gpu or CUDA wheels: `maserve build --accelerator cuda`)", worker)
    index = worker_gpu(worker, gpus) if requested in ("auto", "cuda") else int(requested.split(":")[1])
    if index >= gpus:
        return Placement("cpu", None, requested, gpus, f"GPU {index} is not visible ({gpus} visible: "
                         f"0-{gpus - 1}; {found.source})", worker)
    return Placement(f"cuda:{index}", index, requested, gpus, "", worker)


def unavailable_reason(requested: str, found: Inventory | None = None) -> str | None:
    """Why the model cannot run on a GPU (MASERVE_REQUIRE_ACCELERATOR=1 refuses to start with
    it), or None when it can."""
    placement = place(requested, 0, found or inventory())
    return None if placement.cuda else placement.reason


def default_workers(requested: str, cores: int, found: Inventory | None = None) -> int:
    """MASERVE_WORKERS when it is not set: the cores on the CPU, WORKERS_PER_GPU per GPU (at most
    the cores) when the model runs on GPUs.

    Why not a worker per core on a GPU: each worker holds its own CUDA context (a few hundred MB
    of GPU memory before any weight), its own copy of the weights and its runtime's memory arena,
    which grows to the largest batch's activations and does not shrink; sixteen of those on one
    GPU run it out of memory long before they make it faster, and kernels of several processes
    take turns on a GPU rather than run together. Why not one: a worker decodes and prepares a
    batch on its CPU core, then waits for the GPU, so one worker leaves the GPU idle while it
    prepares; with two, one prepares while the other's batch runs. Batching (prepare and
    predict_batch) is what fills the GPU; a model whose preprocessing outweighs its inference
    wants more workers (MASERVE_WORKERS; bench/gpu.py measures), one too big to fit twice, one."""
    placement = place(requested, 0, found or inventory())
    if not placement.cuda:
        return cores
    gpus = 1 if requested.strip().lower().startswith("cuda:") else placement.gpus
    return max(1, min(cores, WORKERS_PER_GPU * gpus))


# -- this process -------------------------------------------------------------------------------
_placement: Placement | None = None


def place_worker(worker: int, requested: str, require: bool, environ: MutableMapping[str, str] | None = None,
                 found: Inventory | None = None) -> Placement:
    """In a served worker, after the fork and before the model loads: take this worker's device,
    pin CUDA_VISIBLE_DEVICES (of `environ`, default os.environ) to its GPU, log it. Raises
    AcceleratorUnavailable (`require`) when it would be the CPU."""
    global _placement
    environ = os.environ if environ is None else environ
    found = inventory() if found is None else found
    placement = place(requested, worker, found)
    if placement.cuda:
        assert placement.ordinal is not None
        environ["CUDA_VISIBLE_DEVICES"] = found.visible[placement.ordinal]
        placement = replace(placement, ordinal=0)
    _placement = placement
    _log_placement(placement, found, environ.get("CUDA_VISIBLE_DEVICES"))
    if require and not placement.cuda:
        raise AcceleratorUnavailable(f"{REQUIRE_ENV}=1: worker {worker} would run on the CPU: {placement.reason}")
    return placement


def placement() -> Placement:
    """This process's device: the served worker's, else (in process: `maserve predict`, a test, a
    notebook) worker 0's for MASERVE_DEVICE, without pinning."""
    global _placement
    if _placement is None:
        _placement = place(os.environ.get(DEVICE_ENV) or "auto", 0, inventory())
    return _placement


def device() -> str:
    """The device string for the model's framework in this process: `cuda:0` or `cpu`, e.g.
    `torch.device(maserve.accelerator.device())`."""
    return placement().framework_device


def _log_placement(placement: Placement, found: Inventory, pinned: str | None) -> None:
    values = fields(worker=placement.worker, device=placement.device, requested=placement.requested,
                    gpus_visible=placement.gpus, runtime=(found.runtime or "none").replace(" ", "=="),
                    pid=os.getpid())
    if placement.cuda:
        log.info(f"worker {placement.worker}: the model runs on {placement.device} (GPU "
                 f"{placement.device.split(':')[1]} of {placement.gpus}; this process sees only it, "
                 f"CUDA_VISIBLE_DEVICES={pinned})", extra=values)
    elif placement.requested == "cpu" or (placement.gpus == 0 and placement.requested == "auto"):
        log.info(f"worker {placement.worker}: the model runs on the CPU: {placement.reason}", extra=values)
    else:
        log.warning(f"worker {placement.worker}: the model runs on the CPU: {placement.reason} "
                    f"({DEVICE_ENV}={placement.requested}; {REQUIRE_ENV}=1 refuses to start instead)", extra=values)
