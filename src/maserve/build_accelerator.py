"""`maserve build --accelerator cuda`: the requirements of a GPU image, and a check of what they
resolve to before any wheel is downloaded.

The CPU and GPU images share the Dockerfile and the base image; only the wheel set differs, so a
GPU image builds offline and on the Debian-packages base like the CPU one. onnxruntime becomes
onnxruntime-gpu with its `cuda` and `cudnn` extras, which bring NVIDIA's CUDA runtime, cuBLAS,
cuFFT, cuRAND, NVRTC and cuDNN as PyPI wheels (`nvidia-*-cu12` for CUDA 12; from CUDA 13 on
NVIDIA dropped the suffix except for cuDNN: `nvidia-cuda-runtime`, `nvidia-cudnn-cu13`). torch
stays torch: PyPI's Linux x86_64 wheel is the CUDA build and depends on the same nvidia-* wheels
(only a `+cpu` local version, from PyTorch's CPU index, is not). The driver is never in the image:
the host's comes in when the container starts (NVIDIA container toolkit, or the platform's).
The model's own requirements decide the versions: `onnxruntime==1.27.0` becomes
`onnxruntime-gpu[cuda,cudnn]==1.27.0`, the last CUDA 12 release on PyPI (1.28 on are CUDA 13), for
hosts whose driver predates CUDA 13.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ACCELERATORS = ("cpu", "cuda")
# The image label `maserve check --image` reads to know a GPU image (the CPU image has none).
LABEL = "maserve.accelerator"
ORT_GPU = "onnxruntime-gpu"
ORT_GPU_EXTRAS = ("cuda", "cudnn")
# The first onnxruntime-gpu with those extras and onnxruntime.preload_dlls(): older ones expect a
# CUDA installation in the image, which a CUDA base image would bring and this build does not.
ORT_GPU_FIRST_WITH_WHEELS = (1, 21)
RESOLVE_TIMEOUT = 600.0
# CUDA's minimum Linux driver per major version (NVIDIA's CUDA compatibility table: minor version
# compatibility within a major release).
MINIMUM_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?(.*)$", re.DOTALL)
_CPU_INDEX = re.compile(r"download\.pytorch\.org/whl/cpu")
_CUDA_RUNTIME = re.compile(r"nvidia-cuda-runtime(-cu(\d+))?")
_CUDNN = re.compile(r"nvidia-cudnn-cu(\d+)")


class ResolveError(RuntimeError):
    """pip could not resolve the set (its last lines are the message)."""


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_requirement(line: str) -> str | None:
    """One requirement line for a GPU image: onnxruntime (or onnxruntime-gpu without them) becomes
    onnxruntime-gpu with the cuda and cudnn extras and the same version specifiers; torch,
    torchvision and torchaudio lose a `+cpu` local version; a PyTorch CPU index line is dropped
    (None); every other line is kept as it is."""
    stripped = line.strip()
    if stripped.startswith("-"):
        return None if _CPU_INDEX.search(stripped) else line
    match = _REQUIREMENT.match(line)
    if match is None:
        return line
    name, extras, rest = match.groups()
    key = canonical(name)
    if key in ("onnxruntime", ORT_GPU):
        wanted = {e.strip() for e in (extras or "[]")[1:-1].split(",") if e.strip()} | set(ORT_GPU_EXTRAS)
        return f"{ORT_GPU}[{','.join(sorted(wanted))}]{rest.rstrip()}"
    if key in ("torch", "torchvision", "torchaudio"):
        return f"{name}{extras or ''}{re.sub(r'[+]cpu(?![0-9A-Za-z.])', '', rest).rstrip()}"
    return line


def cuda_requirements(lines: Sequence[str]) -> list[str]:
    """cuda_requirement of each line, the dropped ones left out."""
    return [mapped for mapped in map(cuda_requirement, lines) if mapped is not None]


def swap_pyproject_dependencies(pyproject: Path) -> None:
    """Rewrite the `dependencies = [...]` strings of a pyproject.toml with cuda_requirement: the
    maserve wheel of a GPU image depends on onnxruntime-gpu, so that pip never installs the CPU
    onnxruntime beside it (both own the module `onnxruntime`, and the last one installed wins)."""
    text = pyproject.read_text()
    dependencies = tomllib.loads(text).get("project", {}).get("dependencies")
    if not isinstance(dependencies, list):
        raise ValueError(f"{pyproject}: no [project] dependencies list")
    start = re.search(r"(?m)^dependencies\s*=", text)
    assert start is not None  # tomllib found the list
    head, tail = text[: start.start()], text[start.start():]
    for requirement in dependencies:
        mapped = cuda_requirement(requirement)
        if mapped is not None and mapped != requirement:
            for quote in ('"', "'"):
                if f"{quote}{requirement}{quote}" in tail:
                    tail = tail.replace(f"{quote}{requirement}{quote}", json.dumps(mapped), 1)
                    break
            else:
                raise ValueError(f"{pyproject}: dependency {requirement!r} is not written as a plain string")
    pyproject.write_text(head + tail)


@dataclass(frozen=True)
class Resolved:
    """One distribution of a resolved set."""

    name: str  # canonical
    version: str
    url: str


def resolve(arguments: Sequence[str], platform: Sequence[str], env: Mapping[str, str] | None = None,
            extra: Sequence[str] = ()) -> dict[str, Resolved]:
    """What `pip install ARGUMENTS` would install on the image's `platform` (build.platform_args),
    from the index's metadata alone: PEP 658 metadata files, else the wheel's zip directory read
    with HTTP range requests (pip's fast-deps); a multi-GB CUDA set costs seconds, not downloads.
    `env` replaces the environment of pip (the tests resolve against PyPI alone with it)."""
    with tempfile.TemporaryDirectory(prefix="maserve-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--use-feature=fast-deps", "--report", str(report),
                   "--target", str(Path(tmp) / "target"), *platform, *extra, *arguments]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT, check=False,
                                  env=dict(env) if env is not None else None)
        except subprocess.TimeoutExpired as exc:
            raise ResolveError(f"pip ran for more than {RESOLVE_TIMEOUT:g} s") from exc
        if done.returncode != 0 or not report.is_file():
            lines = [line for line in (done.stderr or done.stdout).strip().splitlines()
                     if not line.startswith("WARNING: Location")]
            raise ResolveError("\n".join(lines[-15:]))
        installs = json.loads(report.read_text()).get("install", [])
    resolved = {}
    for item in installs:
        name = canonical(item["metadata"]["name"])
        resolved[name] = Resolved(name, item["metadata"]["version"], item.get("download_info", {}).get("url", ""))
    return resolved


def cuda_major(resolved: Mapping[str, Resolved]) -> int | None:
    """The CUDA major version of the set's runtime wheel (nvidia-cuda-runtime[-cuNN])."""
    for name, dist in resolved.items():
        match = _CUDA_RUNTIME.fullmatch(name)
        if match:
            return int(match.group(2) or dist.version.split(".")[0])
    return None


def problems(resolved: Mapping[str, Resolved]) -> list[str]:
    """What keeps a resolved set from making a working GPU image; empty when nothing does."""
    found: list[str] = []
    ort_gpu = resolved.get(ORT_GPU)
    torch = resolved.get("torch")
    if ort_gpu is None and torch is None:
        found.append("neither onnxruntime-gpu nor torch is in the set: nothing in it runs on a GPU")
    if "onnxruntime" in resolved:
        found.append(f"onnxruntime {resolved['onnxruntime'].version} (the CPU package) is in the set beside "
                     "onnxruntime-gpu: a dependency asks for it by name; both install the module `onnxruntime` "
                     "and the last one installed wins")
    if torch is not None and "+cpu" in torch.version:
        where = torch.url.rsplit("/", 1)[0] if "/" in torch.url else torch.url
        found.append(f"torch {torch.version} is a CPU build (from {where or 'a CPU index'}): a GPU image needs "
                     f"PyPI's torch, whose Linux wheel is the CUDA build; drop the CPU index from pip's settings "
                     f"or pin torch==={torch.version.split('+')[0]}")
    if cuda_major(resolved) is None:
        why = ""
        if ort_gpu is not None and _version(ort_gpu.version) < ORT_GPU_FIRST_WITH_WHEELS:
            why = (f": onnxruntime-gpu {ort_gpu.version} has no cuda/cudnn extras (they start with "
                   f"{'.'.join(map(str, ORT_GPU_FIRST_WITH_WHEELS))}) and expects CUDA installed in the image")
        found.append(f"no CUDA runtime wheel (nvidia-cuda-runtime) in the set{why}")
    if ort_gpu is not None and not any(_CUDNN.fullmatch(name) for name in resolved):
        found.append("no cuDNN wheel (nvidia-cudnn-cuNN) in the set: onnxruntime-gpu's CUDA provider needs it")
    return found


def summary(resolved: Mapping[str, Resolved]) -> str:
    """One line for the build's output: the runtime, the CUDA version and the driver it needs."""
    runtimes = [f"{name} {resolved[name].version}" for name in (ORT_GPU, "torch") if name in resolved]
    major = cuda_major(resolved)
    libraries = sorted(f"{d.name} {d.version}" for d in resolved.values() if d.name.startswith("nvidia-"))
    driver = f"; the host needs an NVIDIA driver >= {MINIMUM_DRIVER[major]}" if major in MINIMUM_DRIVER else ""
    return (f"{', '.join(runtimes) or 'no GPU runtime'}, CUDA {major if major is not None else '?'} from "
            f"{len(libraries)} PyPI wheels ({', '.join(libraries)}){driver}")


def _version(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers)
