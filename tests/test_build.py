"""`maserve build` without a container engine: the build context it renders (Dockerfile, run.sh,
model/, wheels/), the offline wheel set resolving with no index, the wheel made from an installed
(non-editable) maserve, and its refusals. The image itself is built and checked by CI's image stage
(image/ci-image.sh) and tests/test_check_image.py."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import MASERVE_BIN, MNIST_DIR, ROOT

from maserve.build import host_pip_cert, installed_project, platform_args


def maserve_build(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MASERVE_BIN), "build", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def online_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("online") / "context"
    done = maserve_build(MNIST_DIR, "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    return context


def test_context_holds_the_image_files_and_the_model_without_training_files(online_context: Path) -> None:
    assert sorted(p.name for p in online_context.iterdir()) == [".dockerignore", "Dockerfile", "model", "run.sh",
                                                                 "wheels", "wheels.sha256"]
    assert (online_context / "Dockerfile").read_bytes() == (ROOT / "src/maserve/image/Dockerfile").read_bytes()
    assert (online_context / "run.sh").read_bytes() == (ROOT / "image/run.sh").read_bytes()
    assert _mode(online_context / "run.sh") == 0o755
    model = online_context / "model"
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.onnx", "preprocess.py", "service.py"]
    assert (model / "model.onnx").read_bytes() == (MNIST_DIR / "model.onnx").read_bytes()
    assert {_mode(p) for p in model.iterdir()} == {0o644}  # readable by ma-user, owned by root in the image
    dockerfile = (online_context / "Dockerfile").read_text()
    assert 'CMD ["sh", "/home/run.sh"]' in dockerfile and "USER 1000:100" in dockerfile
    assert "--mount=type=bind,source=wheels" in dockerfile and "COPY wheels/" not in dockerfile and "COPY wheels " not in dockerfile
    assert not dockerfile.startswith("# syntax=")  # a frontend pulled from Docker Hub breaks air-gapped builds


def test_the_venv_layer_is_keyed_on_the_wheels_content(online_context: Path) -> None:
    # A bind mount is not part of the build cache's key: the manifest, COPYed before the RUN that
    # installs from wheels/, is. Every file of wheels/ is in it with its sha256, as sha256sum checks.
    done = subprocess.run(["sha256sum", "--check", "--strict", str(online_context / "wheels.sha256")],
                          cwd=online_context / "wheels", capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = sorted(line.split("  ", 1)[1] for line in (online_context / "wheels.sha256").read_text().splitlines())
    assert listed == sorted(p.name for p in (online_context / "wheels").iterdir())
    dockerfile = (online_context / "Dockerfile").read_text()
    copy = dockerfile.index("COPY wheels.sha256 ")
    assert copy < dockerfile.index("RUN --mount=type=bind,source=wheels")
    assert "!wheels.sha256" in (online_context / ".dockerignore").read_text().splitlines()


def test_online_context_carries_only_maserve_whose_wheel_is_complete(online_context: Path) -> None:
    wheels = sorted(p.name for p in (online_context / "wheels").iterdir())
    # The host pip's CA bundle rides along when pip has one (a TLS-inspecting proxy, as here).
    cert = host_pip_cert()
    expected = ["ca-bundle.pem"] * (cert is not None) + ["maserve"] + ["requirements.txt"]
    assert [w.split("-")[0] if w.endswith(".whl") else w for w in wheels] == expected, wheels
    if cert is not None:
        assert (online_context / "wheels" / "ca-bundle.pem").read_bytes() == cert.read_bytes()
    assert (online_context / "wheels" / "requirements.txt").read_text() == ""  # MNIST needs nothing else
    (maserve_wheel,) = (online_context / "wheels").glob("maserve-*.whl")
    names = set(zipfile.ZipFile(maserve_wheel).namelist())
    for needed in ("maserve/image/Dockerfile", "maserve/image/run.sh", "maserve/image/make-base.sh",
                   "maserve/templates/service.py.tmpl", "maserve/app.py", "model_service/pytorch_model_service.py"):
        assert needed in names, needed
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not (ROOT / "build").exists(), "the wheel must be built from a copy, not in the checkout"


def test_offline_context_resolves_with_no_index_for_the_image_platform(tmp_path: Path) -> None:
    context = tmp_path / "context"
    done = maserve_build(MNIST_DIR, "--offline", "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[3/4] downloading" in done.stdout
    wheels = context / "wheels"
    assert not (MNIST_DIR / "requirements.txt").exists()
    names = sorted(p.name.split("-")[0].lower() for p in wheels.glob("*.whl"))
    for needed in ("maserve", "onnxruntime", "numpy", "pillow", "gunicorn", "uvicorn", "uvloop", "jsonschema"):
        assert needed in names, names
    assert not {"torch", "flask", "pytest", "mlxtend"} & set(names), names
    # What the Dockerfile runs (pip install --no-index --find-links /wheels maserve), resolved for
    # the image's platform: every dependency is in wheels/.
    resolve = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", "--find-links", str(wheels),
         "--ignore-installed", "--target", str(tmp_path / "target"), *platform_args("3.11"), "maserve"],
        capture_output=True, text=True, timeout=300, check=False)
    assert resolve.returncode == 0, resolve.stderr[-3000:]


def test_the_models_own_dependencies_go_into_the_image(tmp_path: Path) -> None:
    """config.json's `dependencies` (which ModelArts does not install into a custom image) and the
    model's requirements.txt are installed with maserve; --offline downloads them too."""
    model = tmp_path / "model"
    shutil.copytree(MNIST_DIR, model, ignore=shutil.ignore_patterns("samples", "train.py"))
    config = json.loads((model / "config.json").read_text())
    config["dependencies"] = [{"installer": "pip", "packages": [
        {"package_name": "six", "package_version": "1.16.0", "restraint": "EXACT"}]}]
    (model / "config.json").write_text(json.dumps(config))
    (model / "requirements.txt").write_text("# the model's extras\nidna>=3\n")
    context = tmp_path / "context"
    done = maserve_build(model, "--offline", "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (context / "wheels" / "requirements.txt").read_text() == "six==1.16.0\nidna>=3\n"
    names = {p.name.split("-")[0].lower(): p.name for p in (context / "wheels").glob("*.whl")}
    assert names["six"].startswith("six-1.16.0-") and "idna" in names and "maserve" in names
    resolve = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", "--find-links",
         str(context / "wheels"), "--ignore-installed", "--target", str(tmp_path / "target"), *platform_args("3.11"),
         "maserve", "-r", str(context / "wheels" / "requirements.txt")],
        capture_output=True, text=True, timeout=300, check=False)
    assert resolve.returncode == 0, resolve.stderr[-3000:]


def test_an_explicit_ca_bundle_goes_to_the_online_build_only(tmp_path: Path) -> None:
    bundle = tmp_path / "proxy-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    context = tmp_path / "context"
    done = maserve_build(MNIST_DIR, "--pip-cert", bundle, "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (context / "wheels" / "ca-bundle.pem").read_bytes() == bundle.read_bytes()
    assert "--cert /wheels/ca-bundle.pem" in (context / "Dockerfile").read_text()
    done = maserve_build(MNIST_DIR, "--offline", "--pip-cert", bundle)
    assert done.returncode == 2 and "for online builds" in done.stderr


def test_maserveignore_and_caches_stay_out(tmp_path: Path) -> None:
    model = tmp_path / "digits"
    shutil.copytree(MNIST_DIR, model, ignore=shutil.ignore_patterns("samples", "train.py"))
    (model / ".maserveignore").write_text("# not in the image\nnotes/\n*.ckpt\n")
    (model / "notes").mkdir()
    (model / "notes" / "todo.txt").write_text("x")
    (model / "weights.ckpt").write_text("x")
    (model / "__pycache__").mkdir(exist_ok=True)
    (model / "__pycache__" / "service.cpython-311.pyc").write_bytes(b"x")
    (model / "labels").mkdir()
    (model / "labels" / "names.txt").write_text("zero\n")
    (model / "tool.sh").write_text("#!/bin/sh\n")
    (model / "tool.sh").chmod(0o700)
    context = tmp_path / "context"
    done = maserve_build(model, "--context-only", context)
    assert done.returncode == 0, done.stdout + done.stderr
    shipped = sorted(str(p.relative_to(context / "model")) for p in (context / "model").rglob("*"))
    assert shipped == ["config.json", "labels", "labels/names.txt", "model.onnx", "preprocess.py", "service.py",
                       "tool.sh"]
    assert _mode(context / "model" / "tool.sh") == 0o755 and _mode(context / "model" / "labels") == 0o755


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    done = maserve_build(tmp_path / "missing")
    assert done.returncode == 2 and "not a directory" in done.stderr

    done = maserve_build(tmp_path)
    assert done.returncode == 1 and "has no config.json" in done.stderr

    model = tmp_path / "bad"
    shutil.copytree(MNIST_DIR, model, ignore=shutil.ignore_patterns("samples"))
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "Docker"
    (model / "config.json").write_text(json.dumps(config))
    done = maserve_build(model, "--context-only", tmp_path / "ctx")
    assert done.returncode == 1 and "$.model_type" in done.stderr and "would be refused" in done.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    done = maserve_build(MNIST_DIR, "--context-only", busy)
    assert done.returncode == 1 and "is not empty" in done.stderr

    done = maserve_build(MNIST_DIR, "--offline", "--index-url", "https://example.invalid/simple")
    assert done.returncode == 2 and "--index-url" in done.stderr
    done = maserve_build(MNIST_DIR, "--python-version", "3.9")
    assert done.returncode == 2 and "3.11 or newer" in done.stderr


def test_engine_failure_is_reported_not_raised(tmp_path: Path) -> None:
    """An engine that cannot build (here: one whose `build` always fails) gives exit 1 and says so."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    engine = fake_bin / "podman"
    engine.write_text("#!/bin/sh\necho 'Error: no storage here' >&2\nexit 125\n")
    engine.chmod(0o755)
    env_path = f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin"
    done = subprocess.run([str(MASERVE_BIN), "build", str(MNIST_DIR), "--engine", "podman", "-t", "x:y"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                          env={"PATH": env_path, "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "podman build failed (exit 125)" in done.stderr
    assert "no storage here" in done.stderr  # the engine's own output is passed through


def test_wheel_from_an_installed_maserve_without_its_checkout(tmp_path: Path) -> None:
    """A pip-installed maserve has no pyproject.toml: the project is made from the package and its
    metadata, and its wheel declares the same dependencies."""
    import importlib.metadata

    project = tmp_path / "project"
    installed_project(project)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                           str(tmp_path / "wheels"), str(project)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("maserve-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert {"maserve/image/Dockerfile", "maserve/templates/service.py.tmpl", "model_service/__init__.py"} <= names
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    declared = sorted(line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: "))
    expected = sorted(r for r in importlib.metadata.requires("maserve") or [] if "extra ==" not in r)
    assert declared == expected
    entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "maserve = maserve.cli:main" in entry_points


def test_the_engine_gets_the_build_arguments_and_the_network(tmp_path: Path) -> None:
    """What `maserve build` hands the engine: the tag, the Dockerfile, the base, the variant, --network
    (a mirror on the host's loopback needs `host`), and BuildKit for docker; then it reads the size."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    engine = fake_bin / "docker"  # records its arguments and BuildKit's switch; an image of 300 MB
    engine.write_text(f'#!/bin/sh\necho "DOCKER_BUILDKIT=$DOCKER_BUILDKIT $*" >> {calls}\n'
                      'if [ "$1" = image ]; then echo \'{"Size": 300000000}\'; fi\n')
    engine.chmod(0o755)
    env_path = f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin"
    done = subprocess.run([str(MASERVE_BIN), "build", str(MNIST_DIR), "--engine", "docker", "-t", "digits:1",
                           "--base-image", "localhost/debian-python:bookworm", "--batch", "--network", "host"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                          env={"PATH": env_path, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    build_call, inspect_call = calls.read_text().splitlines()
    arguments = build_call.split()
    assert arguments[:4] == ["DOCKER_BUILDKIT=1", "build", "-t", "digits:1"]
    for pair in (["--network", "host"], ["--build-arg", "BATCH=1"], ["--build-arg", "OFFLINE=0"],
                 ["--build-arg", "BASE_IMAGE=localhost/debian-python:bookworm"]):
        assert any(arguments[i:i + 2] == pair for i in range(len(arguments))), (pair, build_call)
    assert inspect_call.split()[1:4] == ["image", "inspect", "digits:1"]
    assert "digits:1: 300 MB" in done.stdout
    assert "maserve check --image digits:1 --engine docker" in done.stdout and "--batch" in done.stdout
