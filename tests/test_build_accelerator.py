"""`maserve build --accelerator cuda` without a GPU and without downloading the CUDA wheels: the
requirements rewritten for the GPU, the context (the CPU image's Dockerfile, maserve's wheel
depending on onnxruntime-gpu), the label the checker reads, and what pip resolves the set to for
the image's platform, from PyPI's metadata alone (pip's fast-deps: seconds, no gigabytes), with
the host's pip settings set aside so that the answer is PyPI's, as in CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import MASERVE_BIN, MNIST_DIR, ROOT

from maserve import build_accelerator as gpu
from maserve.build import platform_args

IRIS_DIR = ROOT / "examples" / "iris"


def maserve_build(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MASERVE_BIN), "build", *map(str, args)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, check=False, env=env)


def pypi_env() -> dict[str, str]:
    """pip with no configuration file and no PIP_* variables but its CA bundle: PyPI alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    if os.environ.get("PIP_CERT"):
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    return env


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/onnxruntime-gpu/", timeout=20) as reply:
            return reply.status == 200
    except OSError:
        return False


needs_pypi = pytest.mark.skipif(not pypi_reachable(), reason="PyPI is not reachable: the GPU set cannot be resolved")


def resolve_context(context: Path) -> dict[str, gpu.Resolved]:
    """What the Dockerfile's `pip install maserve -r requirements.txt` resolves to for the image."""
    (wheel,) = (context / "wheels").glob("maserve-*.whl")
    return gpu.resolve([str(wheel), "-r", str(context / "wheels" / "requirements.txt")], platform_args("3.11"),
                       env=pypi_env())


def requires_dist(wheel: Path) -> list[str]:
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [line.split(": ", 1)[1] for line in metadata.splitlines()
            if line.startswith("Requires-Dist: ") and "extra ==" not in line]


def test_requirements_for_the_gpu() -> None:
    assert gpu.cuda_requirement("onnxruntime") == "onnxruntime-gpu[cuda,cudnn]"
    assert gpu.cuda_requirement("onnxruntime==1.26.0") == "onnxruntime-gpu[cuda,cudnn]==1.26.0"
    assert gpu.cuda_requirement("ONNXRuntime_GPU>=1.22 ; python_version >= '3.11'") == (
        "onnxruntime-gpu[cuda,cudnn]>=1.22 ; python_version >= '3.11'")
    assert gpu.cuda_requirement("onnxruntime[training]>=1.2") == "onnxruntime-gpu[cuda,cudnn,training]>=1.2"
    assert gpu.cuda_requirement("torch==2.13.0+cpu") == "torch==2.13.0"
    assert gpu.cuda_requirement("torchvision==0.28.0+cpu") == "torchvision==0.28.0"
    assert gpu.cuda_requirement("torch>=2.5") == "torch>=2.5"
    assert gpu.cuda_requirement("--extra-index-url https://download.pytorch.org/whl/cpu") is None
    for kept in ("numpy>=1.26", "onnx==1.17", "onnxruntime-extensions", "--index-url https://mirror.example/simple"):
        assert gpu.cuda_requirement(kept) == kept
    assert gpu.cuda_requirements(["torch==2.13.0+cpu", "-i https://download.pytorch.org/whl/cpu", "six"]) == [
        "torch==2.13.0", "six"]


def test_only_maserves_onnxruntime_dependency_changes(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    gpu.swap_pyproject_dependencies(tmp_path / "pyproject.toml")
    before = (ROOT / "pyproject.toml").read_text().splitlines()
    after = (tmp_path / "pyproject.toml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 1, changed
    assert changed[0][0].strip().startswith('"onnxruntime>=')
    assert changed[0][1].strip().startswith('"onnxruntime-gpu[cuda,cudnn]>=')


@pytest.fixture(scope="module")
def cuda_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    context = tmp_path_factory.mktemp("cuda") / "context"
    done = maserve_build(IRIS_DIR, "--accelerator", "cuda", "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    return context, done


def test_the_cuda_context_is_the_cpu_one_with_gpu_wheels(cuda_context: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    context, done = cuda_context
    assert (context / "Dockerfile").read_bytes() == (ROOT / "src/maserve/image/Dockerfile").read_bytes()
    assert (context / "run.sh").read_bytes() == (ROOT / "image/run.sh").read_bytes()
    (wheel,) = (context / "wheels").glob("maserve-*.whl")
    declared = requires_dist(wheel)
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in declared), declared
    assert not any(r.split(">")[0].split("=")[0].strip() == "onnxruntime" for r in declared), declared
    assert "depending on onnxruntime-gpu[cuda,cudnn], not onnxruntime" in done.stdout
    assert "--label maserve.accelerator=cuda" in done.stdout  # the engine command it prints


@needs_pypi
def test_the_cuda_set_resolves_to_onnxruntime_gpu_and_the_cuda_wheels(
        cuda_context: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    context, _ = cuda_context
    resolved = resolve_context(context)
    names = set(resolved)
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names, sorted(names)
    # CUDA runtime, cuBLAS and cuDNN from PyPI (nvidia-*-cu12 for CUDA 12; unsuffixed from CUDA 13 on).
    for pattern in (r"nvidia-cuda-runtime(-cu\d+)?", r"nvidia-cublas(-cu\d+)?", r"nvidia-cudnn-cu\d+"):
        assert any(re.fullmatch(pattern, n) for n in names), (pattern, sorted(names))
    # ...and the rest of what maserve needs: the set is whole, so --offline downloads all of it.
    for needed in ("maserve", "numpy", "pillow", "gunicorn", "uvicorn", "uvloop", "jsonschema", "prometheus-client"):
        assert needed in names, sorted(names)
    assert gpu.problems(resolved) == []
    assert gpu.cuda_major(resolved) in gpu.MINIMUM_DRIVER
    assert "the host needs an NVIDIA driver >=" in gpu.summary(resolved)


@needs_pypi
def test_a_pinned_onnxruntime_pins_onnxruntime_gpu_and_its_cuda(tmp_path: Path) -> None:
    """The model's pin decides the CUDA: onnxruntime 1.26.0, a CUDA 12 release (up to 1.27), brings nvidia-*-cu12."""
    model = tmp_path / "iris"
    shutil.copytree(IRIS_DIR, model, ignore=shutil.ignore_patterns("samples", "train.py"))
    (model / "requirements.txt").write_text("onnxruntime==1.26.0\n")
    context = tmp_path / "context"
    done = maserve_build(model, "--accelerator", "cuda", "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (context / "wheels" / "requirements.txt").read_text() == "onnxruntime-gpu[cuda,cudnn]==1.26.0\n"
    resolved = resolve_context(context)
    assert resolved["onnxruntime-gpu"].version == "1.26.0"
    assert gpu.cuda_major(resolved) == 12
    assert {"nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12"} <= set(resolved), sorted(resolved)
    assert gpu.problems(resolved) == []


@needs_pypi
def test_a_torch_model_gets_pypis_cuda_torch(tmp_path: Path) -> None:
    model = tmp_path / "torchy"
    shutil.copytree(IRIS_DIR, model, ignore=shutil.ignore_patterns("samples", "train.py"))
    (model / "requirements.txt").write_text("--extra-index-url https://download.pytorch.org/whl/cpu\ntorch\n")
    context = tmp_path / "context"
    done = maserve_build(model, "--accelerator", "cuda", "--context-only", context, env=pypi_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert (context / "wheels" / "requirements.txt").read_text() == "torch\n"  # the CPU index is gone
    resolved = resolve_context(context)
    assert "+cpu" not in resolved["torch"].version
    assert gpu.cuda_major(resolved) is not None and any(n.startswith("nvidia-cudnn-cu") for n in resolved)
    assert gpu.problems(resolved) == []
    assert "GPU: onnxruntime-gpu" in done.stdout and ", torch " in done.stdout


@needs_pypi
def test_the_cpu_set_is_not_a_gpu_set(tmp_path: Path) -> None:
    """The CPU image is unchanged (onnxruntime, no NVIDIA wheels), and the GPU check says why it would not do."""
    context = tmp_path / "context"
    done = maserve_build(IRIS_DIR, "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPU:" not in done.stdout and "--label" not in done.stdout
    resolved = resolve_context(context)
    assert "onnxruntime" in resolved and "onnxruntime-gpu" not in resolved
    assert not [n for n in resolved if n.startswith("nvidia-")]
    found = gpu.problems(resolved)
    assert any("the CPU package" in p for p in found) and any("no CUDA runtime wheel" in p for p in found), found


def test_the_engine_gets_the_label_of_a_gpu_image(tmp_path: Path) -> None:
    """`maserve check --image` knows a GPU image by its maserve.accelerator label; a CPU build has none."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    engine = fake_bin / "docker"
    engine.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                      'if [ "$1" = image ]; then echo \'{"Size": 300000000}\'; fi\n')
    engine.chmod(0o755)
    env = {"PATH": f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    for accelerator, label in (("cuda", ["--label", "maserve.accelerator=cuda"]), ("cpu", [])):
        calls.unlink(missing_ok=True)
        done = maserve_build(MNIST_DIR, "--engine", "docker", "-t", "digits:1", "--accelerator", accelerator, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        arguments = calls.read_text().splitlines()[0].split()
        found = [arguments[i:i + 2] for i in range(len(arguments)) if arguments[i] == "--label"]
        assert found == ([label] if label else []), arguments
