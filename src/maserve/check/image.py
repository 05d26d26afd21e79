"""An image the checker runs itself with podman or docker: what can be read from the image without
starting the service (boot, size, user, batch-deps, secrets), and an ImageTarget so the port,
health, apis, logs, keepalive and shutdown checks run unchanged against the container.

Every engine call is a plain subprocess (`ENGINE image inspect`, `ENGINE run`, `ENGINE exec`,
`ENGINE logs`, `ENGINE kill`, `ENGINE rm -f`), so whatever CONTAINERS_CONF / DOCKER_HOST the
environment has is used as is.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from maserve.check import listen
from maserve.check.accelerator import gpu_run_options
from maserve.check.client import Endpoint
from maserve.check.result import FAIL, PASS, SKIP, WARN, Result, one_line, progress
from maserve.check.target import Options, Target

IMAGE_CHECKS = ("boot", "size", "user", "batch-deps", "secrets")
BOOT_CMD = ["sh", "/home/run.sh"]
SIZE_LIMIT = 10 * 1024**3  # "The size of a custom image cannot exceed 10 GB."
SCAN_DIRS = ("/home", "/opt", "/root", "/app", "/srv", "/workspace")
SCAN_MAX_FILES = 4000
SCAN_MAX_PATHS = 8  # paths named in the evidence
WRITABLE_MAX_PATHS = 50  # writable paths the probe lists (the evidence names SCAN_MAX_PATHS of them)
ENGINE_TIMEOUT = 120.0
CREATE_TIMEOUT = 60.0  # for the engine to create and start the container
# Environment names that look like credentials; GPG_KEY (python:*-slim) is a public key fingerprint.
SECRET_ENV = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|(^|_)(AK|SK)($|_)", re.IGNORECASE)
HARMLESS_ENV = {"GPG_KEY"}
# grep -E patterns run inside the image (GNU grep and busybox both take them), one per kind.
SECRET_PATTERNS = {
    "private key": "-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "access key": "(AKIA|ASIA)[0-9A-Z]{16}|(^|[^A-Za-z])(ak|sk|access_?key(_id)?|secret_?(access_?)?key)"
    "[\"']?[[:space:]]*[:=][[:space:]]*[\"']?[A-Za-z0-9/+]{20,}",
    "password": "(password|passwd|pwd)[\"']?[[:space:]]*[:=][[:space:]]*[\"']?[^[:space:]\"'$]{4,}",
}


class EngineError(RuntimeError):
    pass


def default_engine() -> str:
    """docker when a daemon answers, podman otherwise."""
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0:
                return "docker"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "podman"


def engine_run(engine: str, *args: str, timeout: float = ENGINE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([engine, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise EngineError(f"{engine} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{engine} {args[0]} took more than {timeout:g} s") from exc


def inspect_image(engine: str, image: str) -> dict[str, Any]:
    done = engine_run(engine, "image", "inspect", image, "--format", "{{json .}}")
    if done.returncode != 0:
        raise EngineError(one_line(f"{engine} image inspect {image}: {done.stderr or done.stdout}"))
    value = json.loads(done.stdout)
    return value[0] if isinstance(value, list) else value


# One container run reads everything the image checks need from the file system: the boot file,
# the batch tools, the files that look like they hold a secret, and what the image's user may
# write besides its home and the temporary directories. It runs as root (to read /root) with `sh`
# as entrypoint, so neither the image's USER nor its ENTRYPOINT get in the way.
_PROBE = r"""
echo @boot; test -f /home/run.sh && echo present
echo @users; cut -d: -f1,3 /etc/passwd 2>/dev/null | head -n 500
echo @deps; for c in python3 python java zip; do command -v "$c" >/dev/null 2>&1 && echo "$c"; done
echo @scan
list=/tmp/.maserve-check-files
find {dirs} -xdev \( -path '/opt/venv/lib/*/site-packages' -o -path /proc -o -path /sys \) -prune \
    -o -type f -size -1025k -print 2>/dev/null | head -n {max_files} > "$list"
echo "files $(wc -l < "$list")"
{greps}
rm -f "$list"
echo @gpu
for d in /opt/venv/lib/python3*/site-packages /usr/local/lib/python3*/site-packages; do
    ls -d "$d"/onnxruntime_gpu-*.dist-info "$d"/nvidia/cuda_runtime "$d"/nvidia/cu1[0-9] 2>/dev/null
done | head -n 4
echo @writable
user={user}; uid=${user%%:*}; gid=${user#*:}; [ "$gid" = "$user" ] && gid=""
case "$uid" in *[!0-9]*) uid=$(awk -F: -v n="$uid" '$1 == n {print $3}' /etc/passwd) ;; esac
[ -n "$gid" ] || gid=$(awk -F: -v u="$uid" '$3 == u {print $4}' /etc/passwd)
case "$gid" in *[!0-9]*) gid=$(awk -F: -v n="$gid" '$1 == n {print $3}' /etc/group) ;; esac
home=$(awk -F: -v u="$uid" '$3 == u {print $6}' /etc/passwd)
if [ -n "$uid" ] && [ "$uid" != 0 ]; then
    echo "home ${home:-none}"
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp \
        -o -path "${home:-/nonexistent}" \) -prune -o ! -type l \( -user "$uid" -o -perm -0002 \
        -o \( -group "${gid:-2147483646}" -perm -0020 \) \) -print 2>/dev/null | head -n {max_writable}
fi
"""


def _probe_script(user: str) -> str:
    greps = "\n".join(
        f"tr '\\n' '\\000' < \"$list\" | xargs -0 -r grep -l -i -E -e {_sh_quote(pattern)} -- 2>/dev/null"
        f" | sed 's|^|{kind}\t|'"
        for kind, pattern in SECRET_PATTERNS.items()
    )
    dirs = " ".join(SCAN_DIRS)
    return (_PROBE.replace("{dirs}", dirs).replace("{max_files}", str(SCAN_MAX_FILES)).replace("{greps}", greps)
            .replace("{max_writable}", str(WRITABLE_MAX_PATHS)).replace("{user}", _sh_quote(user)))


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@dataclass
class Probe:
    boot_file: bool = False
    tools: set[str] = field(default_factory=set)
    users: dict[str, str] = field(default_factory=dict)  # uid → name, from /etc/passwd
    scanned: int = 0
    findings: dict[str, list[str]] = field(default_factory=dict)  # kind → paths
    home: str = ""  # the image user's home ("" when the image runs as root)
    writable: list[str] = field(default_factory=list)  # paths that user may write outside home and tmp
    gpu_files: list[str] = field(default_factory=list)  # onnxruntime-gpu, NVIDIA's CUDA wheels: a GPU image
    error: str = ""


def probe_image(engine: str, image: str, user: str) -> Probe:
    """`user` is the image's USER (name or uid, optionally :group), whose writable paths are listed."""
    done = engine_run(engine, "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh",
                      image, "-c", _probe_script(user))
    probe = Probe()
    if "@boot" not in done.stdout:
        probe.error = one_line(f"{engine} run exited {done.returncode}: {done.stderr or done.stdout}", 300)
        return probe
    section = ""
    for line in done.stdout.splitlines():
        if line.startswith("@"):
            section = line[1:]
        elif section == "boot":
            probe.boot_file = line.strip() == "present"
        elif section == "users" and ":" in line:
            user_name, _, uid = line.strip().partition(":")
            probe.users.setdefault(uid, user_name)
        elif section == "deps":
            probe.tools.add(line.strip())
        elif section == "scan" and line.startswith("files "):
            probe.scanned = int(line.split()[1] or 0)
        elif section == "scan" and "\t" in line:
            kind, path = line.split("\t", 1)
            probe.findings.setdefault(kind, []).append(path)
        elif section == "gpu" and line.startswith("/"):
            probe.gpu_files.append(line.strip())
        elif section == "writable" and line.startswith("home "):
            probe.home = line[5:].strip()
        elif section == "writable" and line.startswith("/"):
            probe.writable.append(line.strip())
    return probe


def image_checks(info: dict[str, Any], probe: Probe, options: Options) -> list[Result]:
    config = info.get("Config") or {}
    return [
        _boot(config, probe),
        _size(info),
        _user(config, probe),
        _batch_deps(probe, options.batch),
        _secrets(config, probe),
    ]


def _boot(config: dict[str, Any], probe: Probe) -> Result:
    cmd, entrypoint = config.get("Cmd") or [], config.get("Entrypoint") or []
    problems = []
    if entrypoint:
        problems.append(f"Entrypoint {json.dumps(entrypoint)} runs instead of / in front of the Cmd")
    if cmd != BOOT_CMD:
        problems.append(f"Cmd {json.dumps(cmd)}, want {json.dumps(BOOT_CMD)}")
    if probe.error:
        problems.append(f"/home/run.sh could not be looked for: {probe.error}")
    elif not probe.boot_file:
        problems.append("/home/run.sh is not in the image")
    if problems:
        return Result("boot", FAIL, one_line("; ".join(problems)))
    return Result("boot", PASS, f"Cmd {json.dumps(cmd)}, no Entrypoint, /home/run.sh present")


def _size(info: dict[str, Any]) -> Result:
    size = info.get("Size") or info.get("VirtualSize")
    if not isinstance(size, int):
        return Result("size", WARN, "the engine did not report the image size")
    what = f"{size / 1e6:.0f} MB (limit 10 GB = {SIZE_LIMIT / 1e6:.0f} MB)"
    return Result("size", FAIL if size > SIZE_LIMIT else PASS, what)


def _user(config: dict[str, Any], probe: Probe) -> Result:
    user = str(config.get("User") or "")
    name = user.split(":", 1)[0]
    if name.isdigit() and name in probe.users:
        user = f"{user} ({probe.users[name]})"
    if name in ("", "root", "0"):
        shown = f"User {user!r}" if user else "no USER"
        return Result("user", WARN, f"{shown}: the service runs as root (ModelArts' convention: ma-user, uid 1000)")
    if probe.error:
        return Result("user", PASS, f"runs as {user} (what it may write was not read: {probe.error})")
    allowed = ", ".join(p for p in (probe.home if probe.home != "none" else "", "/tmp", "/var/tmp") if p)
    if probe.writable:
        paths = probe.writable
        shown = ", ".join(paths[:SCAN_MAX_PATHS]) + (f" (+{len(paths) - SCAN_MAX_PATHS} more)"
                                                    if len(paths) > SCAN_MAX_PATHS else "")
        return Result("user", WARN, one_line(
            f"runs as {user}, which may also write outside {allowed}: {shown} "
            "(the model and code should be read-only to the service)", 600))
    return Result("user", PASS, f"runs as {user}; it may write only to {allowed}")


def _batch_deps(probe: Probe, batch: bool) -> Result:
    if probe.error:
        return Result("batch-deps", FAIL if batch else WARN, f"could not run a shell in the image: {probe.error}")
    wanted = {"python": {"python3", "python"}, "java": {"java"}, "zip": {"zip"}}
    missing = [name for name, commands in wanted.items() if not commands & probe.tools]
    if not missing:
        return Result("batch-deps", PASS, "python, java and zip are on the PATH")
    what = f"missing on the PATH: {', '.join(missing)}"
    if batch:
        return Result("batch-deps", FAIL, f"{what} (--batch: a batch service needs them)")
    return Result("batch-deps", WARN, f"{what} (only batch services need them; --batch makes this a FAIL)")


def _secrets(config: dict[str, Any], probe: Probe) -> Result:
    names = []
    for item in config.get("Env") or []:
        name, _, value = str(item).partition("=")
        if value and name not in HARMLESS_ENV and SECRET_ENV.search(name):
            names.append(name)
    found = []
    if names:
        found.append(f"environment variables named like secrets: {', '.join(names)}")
    for kind, paths in probe.findings.items():
        shown = ", ".join(paths[:SCAN_MAX_PATHS]) + (f" (+{len(paths) - SCAN_MAX_PATHS} more)"
                                                    if len(paths) > SCAN_MAX_PATHS else "")
        found.append(f"{kind}: {shown}")
    where = f"{probe.scanned} files under {', '.join(SCAN_DIRS)} (up to 1 MB each, not /opt/venv site-packages)"
    if probe.error:
        return Result("secrets", WARN, one_line("; ".join(found + [f"files not scanned: {probe.error}"])))
    capped = f" (capped at {SCAN_MAX_FILES})" if probe.scanned >= SCAN_MAX_FILES else ""
    if found:
        return Result("secrets", WARN, one_line("; ".join(found) + f" — scanned {where}{capped}", 600))
    return Result("secrets", PASS, f"no secret-like env names; no private key, access key or password= in {where}{capped}")


def skipped_image_checks(reason: str) -> list[Result]:
    return [Result(name, SKIP, reason) for name in IMAGE_CHECKS]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ImageTarget(Target):
    """The container of `options.image`, run attached (so `proc` exits when the container does) with
    its 8080 mapped to a free loopback port; stopped with `ENGINE kill --signal TERM`."""

    engine: str = "podman"
    name: str = ""

    def output(self) -> str:
        try:
            done = engine_run(self.engine, "logs", self.name, timeout=30)
        except EngineError:
            return ""
        return done.stdout + done.stderr

    def listens(self) -> list[tuple[str, int]]:
        if self.proc is not None and self.proc.poll() is not None:
            return []
        try:
            done = engine_run(self.engine, "exec", self.name, "cat", "/proc/net/tcp", "/proc/net/tcp6", timeout=30)
        except EngineError:
            return []
        return sorted(set(listen.parse_tcp_table(done.stdout).values()))

    def terminate(self) -> None:
        engine_run(self.engine, "kill", "--signal", "TERM", self.name, timeout=30)

    def exit_code(self) -> int | None:
        try:
            done = engine_run(self.engine, "inspect", self.name, "--format", "{{.State.ExitCode}}", timeout=30)
            if done.returncode == 0 and done.stdout.strip().lstrip("-").isdigit():
                return int(done.stdout.strip())
        except EngineError:
            pass
        return super().exit_code()

    def service_pid(self) -> int:  # pragma: no cover - terminate() is overridden
        raise NotImplementedError("the container's PID 1 is signalled through the engine")

    def cleanup(self) -> None:
        try:
            engine_run(self.engine, "rm", "-f", self.name, timeout=60)
        except EngineError:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except Exception:  # noqa: BLE001 - the attached client may hang on a dead container
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def start_image(options: Options, engine: str) -> ImageTarget:
    """`ENGINE run` attached, with a loopback port mapping and only the --env the user gave."""
    assert options.image is not None
    port = free_port()
    name = f"maserve-check-{uuid.uuid4().hex[:12]}"
    args = [engine, "run", "--name", name, "-p", f"127.0.0.1:{port}:{options.port}"]
    for item in options.env:
        args += ["-e", item]
    gpus = gpu_run_options(engine, options.accelerator)  # a GPU image on a host with GPUs gets them
    args += gpus
    args.append(options.image)
    progress(f"starting {options.image} as {name} ({engine}), 127.0.0.1:{port} → {options.port}"
             + (f", with the host's GPUs ({' '.join(gpus)})" if gpus else ""))
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = Endpoint("127.0.0.1", port, options.https)
    target = ImageTarget(endpoint, port, proc=proc, engine=engine, name=name)
    # Times ("healthy N s after start") count from the container's start, as for --cmd, not from
    # the engine's creation of it (seconds with the vfs driver).
    deadline = time.monotonic() + CREATE_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = engine_run(engine, "inspect", name, "--format", "{{.State.Running}}", timeout=30)
        except EngineError:
            break
        if state.stdout.strip() == "true":
            break
        time.sleep(0.1)
    target.started = time.monotonic()
    return target


def engine_works(engine: str) -> bool:
    """A quick `ENGINE info`: the tests skip when no engine can run a container."""
    try:
        return engine_run(engine, "info", timeout=30).returncode == 0
    except EngineError:
        return False


__all__ = ["IMAGE_CHECKS", "EngineError", "ImageTarget", "default_engine", "engine_works", "image_checks",
           "inspect_image", "probe_image", "skipped_image_checks", "start_image"]
