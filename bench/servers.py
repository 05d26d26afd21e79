"""bench/ servers: what runs (ServerSpec per name), starting and stopping it, its processes' CPU
time and memory from /proc, health and one checked prediction. Used by run.py, cpu.py, batch.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
LUA = BENCH / "multipart.lua"
HOST = "127.0.0.1"

HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WRK_TIMEOUT = "5s"
WARMUP_CONNECTIONS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Targets stated in the report (not asserted).
TARGET_CONNECTIONS = 64
TARGET_RPS_RATIO = 2.5
TARGET_P99_MS = 20.0

VERSIONED_PACKAGES = (
    "maserve", "gunicorn", "uvicorn", "uvicorn-worker", "httptools", "uvloop", "h11", "starlette",
    "python-multipart", "flask", "werkzeug", "gevent", "onnxruntime", "numpy", "pillow",
)

# Every server run.py knows, in the order they run. Ratios are always against maserve (and the
# targets maserve/baseline).
SERVERS = ("maserve", "maserve-h11", "starlette", "baseline", "floor-asgi", "floor-raw", "floor-lane")
DEFAULT_SERVERS = ("maserve", "baseline")
# Python modules a server needs in the venv beyond gunicorn (checked before the run starts).
SERVER_MODULES = {
    "maserve": ("maserve",),
    "maserve-h11": ("maserve", "uvicorn_worker", "h11"),
    "starlette": ("starlette", "python_multipart", "uvicorn_worker"),
    "baseline": ("flask", "gevent"),
    "floor-asgi": ("uvicorn_worker", "httptools", "uvloop"),
    "floor-raw": ("httptools", "uvloop"),
    "floor-lane": ("maserve", "httptools", "uvloop"),
}



class BenchError(RuntimeError):
    """The harness could not measure a server (it did not start, answered wrongly, ...)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# servers


@dataclass
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    port: int
    health: str = "health"  # relative to url: GET it until 200 (a peer may have no /health)


@dataclass
class LoadResult:
    connections: int
    threads: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    rss_mb: float
    pss_mb: float
    nprocs: int
    cpu_us: float  # server CPU time (master + workers, user + system) per request served
    split: list[int] = field(default_factory=list)  # wrk's connections held by each process, midway
    mean_batch: float | None = None  # maserve's mean batch size during the level (from /metrics)

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())


@dataclass
class ServerRun:
    name: str
    command: str = ""
    answer: object = None
    startup_s: float | None = None
    stop_s: float | None = None
    stop_note: str = ""
    loads: list[LoadResult] = field(default_factory=list)
    failure: str | None = None


def server_spec(name: str, venv_bin: Path, model_dir: Path, workers: int) -> ServerSpec:
    """The command line and environment of server `name` on a free loopback port."""
    port = free_port()
    url = f"http://{HOST}:{port}/"
    gunicorn = [str(venv_bin / "gunicorn"), "--keep-alive", "200", "-w", str(workers),
                "-b", f"{HOST}:{port}", "--chdir", str(REPO)]
    # Both maserve variants log one JSON line per request to stdout (a file here), as in production.
    maserve_env = {"MASERVE_LOG_FORMAT": "json", "MASERVE_GRACE_SECONDS": "0"}
    if name == "maserve":
        # gunicorn + maserve.server.MaserveWorker (uvloop + httptools) + maserve's grace-period master.
        argv = [str(venv_bin / "maserve"), "serve", "--model-dir", str(model_dir),
                "--host", HOST, "--port", str(port), "--workers", str(workers)]
        env = maserve_env
    elif name == "maserve-h11":
        # The same ASGI app on uvicorn's pure-Python stack: asyncio loop + h11 parser.
        argv = [*gunicorn, "-k", "uvicorn_worker.UvicornH11Worker", "bench.maserve_asgi:create_app()"]
        env = {**maserve_env, "MASERVE_MODEL_DIR": str(model_dir)}
    elif name == "starlette":
        # A typical Starlette service on uvicorn's default gunicorn worker (uvloop + httptools).
        argv = [*gunicorn, "-k", "uvicorn_worker.UvicornWorker", "bench.starlette_app:app"]
        env = {"STARLETTE_MODEL_DIR": str(model_dir)}
    elif name == "baseline":
        # The ModelArts spec's recipe: Flask on gunicorn + gevent.
        argv = [*gunicorn, "-k", "gevent", "bench.baseline_app:app"]
        env = {"BASELINE_MODEL_DIR": str(model_dir)}
    elif name == "floor-asgi":
        # No model: the canned answer from a bare ASGI app on uvicorn's worker (bench/floor_app.py).
        argv = [*gunicorn, "-k", "uvicorn_worker.UvicornWorker", "bench.floor_app:app"]
        env = {}
    elif name == "floor-raw":
        # No model, no ASGI: uvloop + httptools and a prebuilt reply (bench/floor_app.py).
        argv = [sys.executable, str(BENCH / "floor_app.py"), "--host", HOST, "--port", str(port),
                "--workers", str(workers)]
        env = {}
    elif name == "floor-lane":
        # maserve's batcher, model path and access line on a bare uvloop + httptools protocol (bench/floor_lane.py).
        argv = [sys.executable, str(BENCH / "floor_lane.py"), "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--model-dir", str(model_dir)]
        env = {}
    else:  # pragma: no cover - parse_args only lets SERVERS through
        raise ValueError(name)
    return ServerSpec(name, argv, env, url, port)


def labelled_spec(label: str, venv_bin: Path, model_dir: Path, workers: int) -> ServerSpec:
    """`NAME[@CHECKOUT][+VAR=VALUE...]`: server NAME (from another checkout's src/ and the same
    model folder name in it, with @), with extra environment variables (+); named `label`."""
    server, *assignments = label.split("+")
    name, _, checkout = server.partition("@")
    if checkout:
        model_dir = Path(checkout).resolve() / model_dir.resolve().relative_to(REPO)
    spec = server_spec(name, venv_bin, model_dir.resolve(), workers)
    spec.env.update(assignment.split("=", 1) for assignment in assignments)  # type: ignore[arg-type]
    if "MASERVE_WORKERS" in spec.env and "--workers" in spec.argv:  # the flag would win over the variable
        spec.argv[spec.argv.index("--workers") + 1] = spec.env["MASERVE_WORKERS"]
    if checkout:
        spec.env["PYTHONPATH"] = f"{Path(checkout).resolve() / 'src'}:{REPO}"
    spec.name = label
    return spec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


_LIBC = _load_libc()


def _die_with_parent() -> None:
    """preexec_fn: the server gets SIGTERM if this harness dies without cleaning up (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def start_server(spec: ServerSpec, stdout_path: str, stderr_path: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(spec.env)
    with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
        return subprocess.Popen(
            spec.argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # own process group: pgid == pid, killed as a whole at the end
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )


def stop_server(proc: subprocess.Popen, run: ServerRun) -> None:
    """SIGTERM the master (as `docker stop` would), SIGKILL the group if it takes > 30 s."""
    before = set(session_pids(proc.pid))  # once the master is gone, its setsid children are init's
    try:
        if proc.poll() is None:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
                run.stop_s = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                run.stop_note = f"did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM: killed"
                log(f"{run.name}: {run.stop_note}")
                _killpg(proc.pid)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        elif not run.stop_note:
            run.stop_note = f"had already exited (code {proc.returncode})"
    finally:
        # Whatever is left in the group (workers orphaned by a crashed master, ...).
        leftovers = [p for p in {*session_pids(proc.pid), *(p for p in before if _stat_fields(p) is not None)}
                     if p != proc.pid and (_stat_fields(p) or ["Z"])[0] != "Z"]
        if leftovers:
            note = f"{len(leftovers)} process(es) still alive after the master exited: killed"
            run.stop_note = f"{run.stop_note}; {note}" if run.stop_note else note
        _killpg(proc.pid)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _killpg(pgid: int) -> None:
    """SIGKILL the group, and the descendants that left it for sessions of their own."""
    stragglers = session_pids(pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in stragglers:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the ")" that closes comm (state ppid pgrp session ...), or
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def session_pids(sid: int) -> list[int]:
    """PIDs of every live process in session `sid` (the server was started with start_new_session),
    and of their descendants in sessions of their own (BentoML's supervisor calls setsid for each
    worker): everything the server runs, counted in its CPU time and memory, killed at the end."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        rest = _stat_fields(entry)
        if rest is None or len(rest) < 4 or rest[0] == "Z":
            continue
        parents[int(entry)] = int(rest[1])
        if int(rest[3]) == sid:
            found.add(int(entry))
    for _ in range(64):  # bounded: one generation per pass
        more = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        if not more:
            break
        found |= more
    return sorted(found)


def cpu_seconds(sid: int) -> float:
    """utime + stime of every live process in session `sid` (a process's stat sums its threads)."""
    ticks = 0
    for pid in session_pids(sid):
        rest = _stat_fields(pid)
        if rest is not None:
            ticks += int(rest[11]) + int(rest[12])  # utime, stime
    return ticks / CLOCK_TICKS


def memory_of(sid: int) -> tuple[int, float, float]:
    """(number of processes, summed RSS MB, summed PSS MB) over master + workers."""
    pids = session_pids(sid)
    rss_kb = pss_kb = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss_kb += int(line.split()[1])
                        break
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss_kb += int(line.split()[1])
                        break
        except OSError:
            pass
    return len(pids), rss_kb / 1024.0, pss_kb / 1024.0


def wait_healthy(proc: subprocess.Popen, spec: ServerSpec, output) -> float:
    t0 = time.monotonic()
    deadline = t0 + HEALTH_TIMEOUT_S
    last = "no answer yet"
    for _ in range(int(HEALTH_TIMEOUT_S / 0.1) + 1):  # bounded in count and in time
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before it was healthy\n{output()}")
        if time.monotonic() > deadline:
            break
        try:
            with urllib.request.urlopen(spec.url + spec.health, timeout=2) as resp:
                body = resp.read()
                if resp.status == 200:
                    try:
                        answer = json.loads(body)
                    except ValueError:
                        answer = None
                    if answer != {"health": "true"}:
                        log(f"{spec.name}: /health answered 200 with {body[:200]!r} (expected {{\"health\": \"true\"}})")
                    return time.monotonic() - t0
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.1)
    raise BenchError(f"/health not 200 within {HEALTH_TIMEOUT_S:.0f} s (last: {last})\n{output()}")


def tail(path: str, lines: int = 15, width: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 200_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line[:width] for line in text.splitlines()[-lines:]]
    return f"{os.path.basename(path)} (tail):\n  " + "\n  ".join(kept) if kept else ""


def server_output(stdout_path: str, stderr_path: str) -> str:
    """The end of what the server wrote (maserve logs to stdout, gunicorn tracebacks go to stderr)."""
    return "\n".join(t for t in (tail(stdout_path), tail(stderr_path)) if t) or "(the server wrote nothing)"


def predict_once(spec: ServerSpec, image: Path, expect: int | dict | None) -> object:
    """POST the image as field `images`; the answer must be {"mnist_result": expect} for a digit,
    exactly `expect` for a dict (another model's reference answer), any JSON object for None."""
    boundary = "----maservebench" + uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="images"; filename="{image.name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        spec.url, data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        raise BenchError(f"POST / answered HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"POST / failed: {exc}") from None
    if status != 200:
        raise BenchError(f"POST / answered HTTP {status}: {raw[:300]!r}")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise BenchError(f"POST / answered non-JSON: {raw[:300]!r}") from None
    if isinstance(expect, dict):
        if answer != expect:
            raise BenchError(f"POST / answered {json.dumps(answer)[:300]}, expected {json.dumps(expect)[:300]}")
        return answer
    value = answer.get("mnist_result") if isinstance(answer, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9:
        raise BenchError(f'POST / answered {answer!r}, expected {{"mnist_result": <int 0-9>}}')
    if expect is not None and value != expect:
        raise BenchError(f"POST / answered {answer!r} for {image.name}, expected {expect} (use --expect none to skip)")
    if "application/json" not in ctype:
        log(f"{spec.name}: POST / Content-Type is {ctype!r}, not application/json")
    if set(answer) != {"mnist_result"}:
        log(f"{spec.name}: POST / answer has extra keys: {answer!r}")
    return answer


