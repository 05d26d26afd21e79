"""`maserve build`: a ModelArts custom image from a model directory, with docker or podman, online or
offline.

The build context is rendered in a temporary directory from files maserve ships (its Dockerfile and
run.sh), the model directory (as model/) and wheels/: maserve's own wheel and, with --offline, every
dependency, downloaded on the host for the image's platform and Python. The Dockerfile bind-mounts
wheels/ in the one RUN step that installs them, so no wheel lands in a layer, and an offline build
needs no package index at all.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from maserve import build_accelerator as gpu
from maserve.check.image import EngineError, default_engine, inspect_image
from maserve.config import ConfigError, read_config
from maserve.scaffold import image_name
from maserve.validate import ERROR, validate_config

DEFAULT_BASE = "python:3.11-slim"
DEFAULT_PYTHON = "3.11"
# The newest glibc of the supported bases (Debian bookworm, python:3.11-slim): pip does not widen
# manylinux_2_x tags by itself, so every accepted tag is named.
GLIBC = (2, 36)
BUILD_TIMEOUT = 3600.0
PIP_TIMEOUT = 1800.0
IGNORE_FILE = ".maserveignore"
CA_BUNDLE = "ca-bundle.pem"  # in wheels/ for online builds: the index's CA (pip's cert setting)
REQUIREMENTS = "requirements.txt"  # in wheels/: the model's own pip requirements, installed with maserve
RESTRAINT_OPERATORS = {"EXACT": "==", "ATLEAST": ">=", "ATMOST": "<="}
# Never part of an image: caches, VCS and venvs, and samples/ (the checker's inputs and answers).
ALWAYS_IGNORED = ("__pycache__", "*.pyc", "*.pyo", ".git", ".venv*", ".DS_Store", "samples", IGNORE_FILE)
# wheels/ by content, in sha256sum's format, COPYed into the image before the RUN that installs
# from the bind-mounted wheels/: a COPY's content is part of the build cache's key and a bind
# mount's is not, so without it a changed requirement or wheel reuses the venv layer of an earlier
# build (seen with podman/buildah: a CUDA 12 build came out with the CUDA 13 venv of the build before).
WHEELS_MANIFEST = "wheels.sha256"
CONTEXT_DOCKERIGNORE = f"*\n!Dockerfile\n!run.sh\n!model\n!wheels\n!{WHEELS_MANIFEST}\n"

Say = Callable[[str], None]


class BuildError(Exception):
    """A build that cannot start or did not finish; the message says why and what to do."""


@dataclass(frozen=True)
class BuildOptions:
    model_dir: Path
    tag: str
    engine: str | None = None  # None: docker when a daemon answers, else podman
    base_image: str = DEFAULT_BASE
    batch: bool = False
    offline: bool = False
    python_version: str = DEFAULT_PYTHON
    index_url: str = ""
    pip_cert: Path | None = None  # CA bundle for the index in an online build; None: the host pip's
    network: str = ""  # the RUN steps' network (`host`: reach a mirror on the host's loopback); "": the engine's
    context_dir: Path | None = None  # render the context here and do not build
    accelerator: str = "cpu"  # cuda: the same Dockerfile and base, GPU wheels (maserve.build_accelerator)


def build(options: BuildOptions, say: Say) -> int:
    """Render the context, build it; returns the image size in bytes (0 for --context-only)."""
    if options.context_dir is not None:
        render_context(options, options.context_dir, say)
        say(f"context ready in {options.context_dir}; build it with {_engine_hint(options)}")
        return 0
    _check_model_dir(options.model_dir)  # the model's own problems first: they need no engine to report
    engine = options.engine or default_engine()
    if shutil.which(engine) is None:
        raise BuildError(f"{engine} is not installed (install docker or podman, or pass --engine)")
    with tempfile.TemporaryDirectory(prefix="maserve-build-") as tmp:
        context = Path(tmp)
        render_context(options, context, say)
        command = build_command(options, engine, context)
        say(f"[4/4] {shlex.join(command)}")
        started = time.monotonic()
        env = {**os.environ, "DOCKER_BUILDKIT": "1"} if engine == "docker" else None  # RUN --mount needs it
        try:
            done = subprocess.run(command, env=env, timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{engine} build ran for more than {BUILD_TIMEOUT:g} s") from exc
        if done.returncode != 0:
            raise BuildError(f"{engine} build failed (exit {done.returncode}); its output is above")
        say(f"built {options.tag} in {time.monotonic() - started:.0f} s")
    size = image_size(engine, options.tag)
    say(f"{options.tag}: {size / 1e6:.0f} MB ({engine} image inspect); ModelArts' limit is 10 GB")
    check = ["maserve", "check", "--image", options.tag, "--engine", engine, "--config", str(options.model_dir)]
    if options.batch:
        check.append("--batch")
    say(f"next: {shlex.join(check)}")
    return size


def render_context(options: BuildOptions, context: Path, say: Say) -> None:
    """Dockerfile, run.sh, model/ and wheels/ into `context` (created if missing, must be empty)."""
    config = _check_model_dir(options.model_dir)
    context.mkdir(parents=True, exist_ok=True)
    if any(context.iterdir()):
        raise BuildError(f"{context} is not empty")
    image_files = resources.files("maserve") / "image"
    for name, mode in (("Dockerfile", 0o644), ("run.sh", 0o755)):
        target = context / name
        target.write_bytes((image_files / name).read_bytes())
        target.chmod(mode)
    (context / ".dockerignore").write_text(CONTEXT_DOCKERIGNORE)
    say(f"[1/4] model files from {options.model_dir}")
    copied = copy_model_dir(options.model_dir, context / "model")
    say(f"      {len(copied)} files, {_size_of(context / 'model') / 1e6:.1f} MB")
    wheels = context / "wheels"
    wheels.mkdir()
    cuda = options.accelerator == "cuda"
    say("[2/4] maserve's wheel" + (" (--accelerator cuda: depending on onnxruntime-gpu[cuda,cudnn], not onnxruntime)"
                                   if cuda else ""))
    maserve_wheel(wheels, options.accelerator)
    requirements = model_requirements(options.model_dir, config)
    if cuda:
        requirements = gpu.cuda_requirements(requirements)
    (wheels / REQUIREMENTS).write_text("".join(f"{line}\n" for line in requirements))
    if requirements:
        say(f"      the model's requirements (config.json dependencies, requirements.txt"
            f"{'; for the GPU: onnxruntime → onnxruntime-gpu, no torch +cpu' if cuda else ''}): {', '.join(requirements)}")
    if cuda:
        check_cuda_set(options, wheels, say)
    if options.offline:
        say(f"[3/4] downloading the dependencies' wheels for linux {platform.machine()}, "
            f"CPython {options.python_version} (--offline: no package index inside the build)")
        download_dependencies(wheels, options.python_version)
    else:
        where = options.index_url or "pip's default index"
        say(f"[3/4] dependencies: installed from {where} inside the build (--offline avoids that)")
        cert = options.pip_cert or host_pip_cert()
        if cert is not None:
            shutil.copyfile(cert, wheels / CA_BUNDLE)
            say(f"      CA bundle for the index: {cert} (bind-mounted with the wheels, never in a layer)")
    write_manifest(wheels, context / WHEELS_MANIFEST)
    count = len(list(wheels.glob("*.whl")))
    say(f"      wheels/: {count} wheel{'' if count == 1 else 's'}, {_size_of(wheels) / 1e6:.1f} MB "
        "(bind-mounted, never in a layer)")


def write_manifest(wheels: Path, manifest: Path) -> None:
    """Every file of `wheels` with its sha256, sorted by name, as `sha256sum` writes them."""
    lines = []
    for path in sorted(p for p in wheels.rglob("*") if p.is_file()):
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        lines.append(f"{digest}  {path.relative_to(wheels).as_posix()}\n")
    manifest.write_text("".join(lines))


def _check_model_dir(model_dir: Path) -> dict[str, Any]:
    """config.json, refused when ModelArts would refuse it."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise BuildError(f"{model_dir} has no config.json (see `maserve init`)")
    try:
        raw = read_config(config_path)
    except ConfigError as exc:
        raise BuildError(str(exc)) from exc
    errors = [f for f in validate_config(raw) if f.level == ERROR]
    if errors:
        listed = "; ".join(f"{f.path}: {f.message}" for f in errors)
        raise BuildError(f"{config_path} would be refused by ModelArts: {listed} (maserve config validate)")
    return raw


def model_requirements(model_dir: Path, config: dict[str, Any]) -> list[str]:
    """The model's own pip requirements: config.json's `dependencies` (ModelArts installs them only
    for its own base images, never into a custom image) and the lines of requirements.txt."""
    lines = []
    for dependency in config.get("dependencies") or []:
        for package in dependency.get("packages") or []:
            version = package.get("package_version")
            operator = RESTRAINT_OPERATORS[package.get("restraint") or "EXACT"]  # blank: as validate warns
            lines.append(f"{package['package_name']}{operator}{version}" if version else package["package_name"])
    requirements = model_dir / "requirements.txt"
    if requirements.is_file():
        lines += [line.strip() for line in requirements.read_text().splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    return lines


def ignore_patterns(model_dir: Path) -> list[str]:
    """ALWAYS_IGNORED plus the glob patterns of the model directory's .maserveignore (# comments)."""
    patterns = list(ALWAYS_IGNORED)
    ignore_file = model_dir / IGNORE_FILE
    if ignore_file.is_file():
        for line in ignore_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.rstrip("/"))
    return patterns


def copy_model_dir(source: Path, target: Path) -> list[Path]:
    """Copy what the image needs, world-readable (dirs 755, files 644 or 755 when executable), so
    the root-owned copy in the image is readable, not writable, by the service's user."""
    patterns = ignore_patterns(source)
    copied: list[Path] = []

    def ignored(relative: Path) -> bool:
        text = relative.as_posix()
        return any(fnmatch.fnmatch(relative.name, p) or fnmatch.fnmatch(text, p) for p in patterns)

    for directory, dirnames, filenames in os.walk(source):
        relative_dir = Path(directory).relative_to(source)
        dirnames[:] = sorted(d for d in dirnames if not ignored(relative_dir / d))
        (target / relative_dir).mkdir(parents=True, exist_ok=True)
        (target / relative_dir).chmod(0o755)
        for name in sorted(filenames):
            relative = relative_dir / name
            if ignored(relative):
                continue
            destination = target / relative
            shutil.copyfile(source / relative, destination)  # follows symlinks: the image gets the file
            executable = os.access(source / relative, os.X_OK)
            destination.chmod(0o755 if executable else 0o644)
            copied.append(relative)
    return copied


def source_project() -> Path | None:
    """The maserve checkout this package runs from (src layout, editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"maserve"', pyproject.read_text()):
        return root
    return None


def check_cuda_set(options: BuildOptions, wheels: Path, say: Say) -> None:
    """Resolve what the GPU image will install, from metadata only, before any download: refuse a
    set that would not run on a GPU (the CPU onnxruntime in it, a +cpu torch, no CUDA wheels) and
    say which CUDA it brings. An online build resolves inside the build, perhaps from another index:
    there a failure to resolve on the host is only reported."""
    maserve_whl = sorted(wheels.glob("maserve-*.whl"))[-1]
    extra = ["--index-url", options.index_url] if options.index_url and not options.offline else []
    try:
        resolved = gpu.resolve([str(maserve_whl), "-r", str(wheels / REQUIREMENTS)],
                               platform_args(options.python_version), extra=extra)
    except gpu.ResolveError as exc:
        if options.offline:
            raise BuildError(f"the GPU wheel set does not resolve for the image's platform:\n{exc}") from exc
        say(f"      (the GPU wheel set could not be resolved on the host; the build will try: {exc})")
        return
    found = gpu.problems(resolved)
    if found:
        raise BuildError("--accelerator cuda: " + "; ".join(found))
    say(f"      GPU: {gpu.summary(resolved)}")


def maserve_wheel(wheels: Path, accelerator: str = "cpu") -> Path:
    """Build maserve's wheel into `wheels` from a copy of its sources: the checkout's when this runs
    from one, else a project made from the installed package and its metadata. For a GPU image its
    onnxruntime dependency is onnxruntime-gpu (maserve.build_accelerator)."""
    with tempfile.TemporaryDirectory(prefix="maserve-wheel-") as tmp:
        project = Path(tmp) / "maserve"
        root = source_project()
        if root is not None:
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(root / "src", project / "src", ignore=ignore)
            for name in ("pyproject.toml", "README.md", "LICENSE"):
                if (root / name).is_file():
                    shutil.copy2(root / name, project / name)
        else:
            installed_project(project)
        if accelerator == "cuda":
            gpu.swap_pyproject_dependencies(project / "pyproject.toml")
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(project))
    found = sorted(wheels.glob("maserve-*.whl"))
    if not found:
        raise BuildError("pip wheel made no maserve wheel")
    return found[-1]


def installed_project(project: Path) -> None:
    """A minimal project for the installed maserve (a wheel install has no pyproject.toml)."""
    import maserve

    for package in ("maserve", "model_service"):
        spec_dir = Path(maserve.__file__).resolve().parent.parent / package
        shutil.copytree(spec_dir, project / "src" / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    requires = [r for r in importlib.metadata.requires("maserve") or [] if "extra ==" not in r]
    dependencies = ",\n".join(f"    {_toml_string(r)}" for r in requires)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "maserve"\nversion = {_toml_string(importlib.metadata.version("maserve"))}\n'
        f'requires-python = ">=3.11"\ndependencies = [\n{dependencies}\n]\n\n'
        '[project.scripts]\nmaserve = "maserve.cli:main"\n\n'
        '[tool.setuptools.packages.find]\nwhere = ["src"]\n\n'
        '[tool.setuptools.package-data]\nmaserve = ["templates/*.tmpl", "image/*"]\n'
    )


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def host_pip_cert() -> Path | None:
    """The CA bundle the host's pip uses (PIP_CERT or pip's `cert` setting), if one is set: behind a
    TLS-inspecting proxy the build needs it to reach the index as the host does."""
    value = os.environ.get("PIP_CERT", "")
    if not value:
        try:
            listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                    text=True, timeout=60, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            listed = ""
        for line in listed.splitlines():
            key, _, raw = line.partition("=")
            if key.endswith(".cert"):
                value = raw.strip().strip("'\"")
    return Path(value) if value and Path(value).is_file() else None


def platform_args(python_version: str, machine: str | None = None) -> list[str]:
    """pip's target options for the image: manylinux wheels for this architecture and CPython."""
    machine = machine or platform.machine()
    args = ["--only-binary=:all:", "--platform", f"manylinux2014_{machine}"]
    for minor in range(17, GLIBC[1] + 1):
        args += ["--platform", f"manylinux_{GLIBC[0]}_{minor}_{machine}"]
    abi = "cp" + python_version.replace(".", "")
    return args + ["--python-version", python_version, "--implementation", "cp",
                   "--abi", abi, "--abi", "abi3", "--abi", "none"]


def download_dependencies(wheels: Path, python_version: str) -> None:
    """Every wheel maserve and the model need on the image's platform, resolved together (one
    consistent set) with the host's pip settings."""
    maserve_whl = sorted(wheels.glob("maserve-*.whl"))[-1]
    _pip("download", "--quiet", "--dest", str(wheels), *platform_args(python_version), str(maserve_whl),
         "-r", str(wheels / REQUIREMENTS))


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"pip {args[0]} ran for more than {PIP_TIMEOUT:g} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BuildError(f"pip {args[0]} failed (exit {done.returncode}):\n{tail}")


def build_command(options: BuildOptions, engine: str, context: Path) -> list[str]:
    command = [engine, "build", "-t", options.tag, "-f", str(context / "Dockerfile"),
               "--build-arg", f"BASE_IMAGE={options.base_image}",
               "--build-arg", f"BATCH={int(options.batch)}",
               "--build-arg", f"OFFLINE={int(options.offline)}"]
    if options.index_url and not options.offline:
        command += ["--build-arg", f"INDEX_URL={options.index_url}"]
    if options.network:
        command += ["--network", options.network]
    if options.accelerator != "cpu":  # `maserve check --image` reads it; the CPU image stays as it was
        command += ["--label", f"{gpu.LABEL}={options.accelerator}"]
    if engine == "podman":
        command += ["--format", "docker"]  # Docker-format manifests: what SWR and `docker pull` expect
    return command + [str(context)]


def _engine_hint(options: BuildOptions) -> str:
    assert options.context_dir is not None
    command = build_command(options, "docker", options.context_dir)
    return "DOCKER_BUILDKIT=1 " + shlex.join(command) + "  (or podman build ... --format docker)"


def image_size(engine: str, tag: str) -> int:
    try:
        size = inspect_image(engine, tag).get("Size")
    except (EngineError, ValueError) as exc:  # ValueError: not JSON
        raise BuildError(str(exc)) from exc
    if not isinstance(size, int):
        raise BuildError(f"{engine} image inspect {tag} reported no size")
    return size


def default_tag(model_dir: Path) -> str:
    """maserve-<directory name>:latest, lowercased to what image references allow."""
    return f"maserve-{image_name(model_dir.resolve().name)}:latest"


def _size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
