#!/usr/bin/env python3
"""Side-by-side loopback benchmark: maserve vs the baseline recipe of the ModelArts spec.

Starts each selected server in turn (--servers; by default maserve, then the baseline: Flask on
gunicorn + gevent, bench/baseline_app.py), one after the other and never two at once, each on a
free 127.0.0.1 port with the same worker count. Two more variants pick maserve's worker class by
measurement: `maserve-h11` (the same app under uvicorn's asyncio + h11 worker) and `starlette`
(a typical Starlette service under uvicorn's default worker, bench/starlette_app.py). For each
server: wait for GET /health 200, check one real prediction, warm up, then run wrk at each
connection count, sample the memory of the server's processes, and stop it with SIGTERM.
Prints a markdown report (results, maserve/baseline ratios, each variant relative to maserve,
targets) on stdout; progress goes to stderr.

    .venv/bin/python bench/run.py                      # maserve + baseline, 1/8/64 connections, 10 s each
    .venv/bin/python bench/run.py --servers all        # maserve, maserve-h11, starlette, baseline
    .venv/bin/python bench/run.py --servers baseline --duration 5
    .venv/bin/python bench/run.py --output bench/RESULTS.md

Standard library only (the servers run from the project's venv; wrk must be on PATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
SERVERS = ("maserve", "maserve-h11", "starlette", "baseline")
DEFAULT_SERVERS = ("maserve", "baseline")
# Python modules a server needs in the venv beyond gunicorn (checked before the run starts).
SERVER_MODULES = {
    "maserve": ("maserve",),
    "maserve-h11": ("maserve", "uvicorn_worker", "h11"),
    "starlette": ("starlette", "python_multipart", "uvicorn_worker"),
    "baseline": ("flask", "gevent"),
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
    else:  # pragma: no cover - parse_args only lets SERVERS through
        raise ValueError(name)
    return ServerSpec(name, argv, env, url, port)


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
        leftovers = [p for p in session_pids(proc.pid) if p != proc.pid]
        if leftovers:
            note = f"{len(leftovers)} process(es) still alive after the master exited: killed"
            run.stop_note = f"{run.stop_note}; {note}" if run.stop_note else note
        _killpg(proc.pid)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
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
    """PIDs of every process in session `sid` (the server was started with start_new_session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        rest = _stat_fields(entry)
        if rest is not None and len(rest) >= 4 and int(rest[3]) == sid and rest[0] != "Z":
            pids.append(int(entry))
    return pids


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
            with urllib.request.urlopen(spec.url + "health", timeout=2) as resp:
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


def predict_once(spec: ServerSpec, image: Path, expect: int | None) -> object:
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


# ---------------------------------------------------------------------------------------------
# wrk

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(output: str, duration_s: float) -> dict:
    """Numbers from wrk's output: the WRK_JSON line of multipart.lua's done(), else the text."""
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            d = json.loads(line[len("WRK_JSON "):])
            seconds = d["duration_us"] / 1e6 or duration_s
            return {
                "rps": d["requests"] / seconds,
                "requests": d["requests"],
                "p50_ms": d["p50_us"] / 1000.0,
                "p99_ms": d["p99_us"] / 1000.0,
                "errors": {k: d[k] for k in ("connect", "read", "write", "timeout")} | {"non2xx": d["status"]},
            }
    # Fallback: wrk's human-readable report (with --latency).
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    reqs = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and reqs and p50 and p99):
        raise BenchError(f"cannot parse wrk output:\n{output[-2000:]}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors.update(zip(("connect", "read", "write", "timeout"), map(int, sock.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors["non2xx"] = int(non2xx.group(1))
    return {
        "rps": float(rps.group(1)), "requests": int(reqs.group(1)),
        "p50_ms": _to_ms(p50.group(1)), "p99_ms": _to_ms(p99.group(1)), "errors": errors,
    }


def run_wrk(url: str, image: Path, connections: int, duration_s: int,
            midway: Callable[[], None] | None = None) -> tuple[int, dict]:
    """Run wrk; `midway`, if given, is called halfway through the load (to look at the server)."""
    threads = max(1, min(connections, 2))
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
        "--timeout", WRK_TIMEOUT, "-s", str(LUA), url, "--", str(image),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=_die_with_parent if _LIBC is not None else None)
    try:
        if midway is not None:
            try:
                proc.wait(timeout=duration_s / 2)
            except subprocess.TimeoutExpired:
                midway()
        stdout, stderr = proc.communicate(timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"wrk did not finish within {duration_s + 60} s: {shlex.join(cmd)}") from None
    if proc.returncode != 0:
        raise BenchError(f"wrk failed (code {proc.returncode}): {stderr.strip() or stdout.strip()}")
    return threads, parse_wrk(stdout, duration_s)


def connections_per_process(sid: int, port: int) -> list[int]:
    """Established TCP connections on `port` held by each process of session `sid`, most first:
    how the kernel handed wrk's connections to the workers (e.g. [33, 31])."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])  # 01 = ESTABLISHED; the server's end has the server's port
    counts = []
    for pid in session_pids(sid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        held = 0
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


# ---------------------------------------------------------------------------------------------
# one server, start to stop


def bench_server(spec: ServerSpec, args: argparse.Namespace, image: Path, expect: int | None,
                 logdir: str) -> ServerRun:
    run = ServerRun(spec.name, command=shlex.join(spec.argv))
    # stdout to a file, not a pipe nobody reads (maserve writes one log line per request there).
    stdout_path = os.path.join(logdir, f"{spec.name}.stdout.log")
    stderr_path = os.path.join(logdir, f"{spec.name}.stderr.log")
    output = lambda: server_output(stdout_path, stderr_path)  # noqa: E731
    log(f"{spec.name}: starting on {spec.url}: {run.command}")
    proc = start_server(spec, stdout_path, stderr_path)
    try:
        run.startup_s = wait_healthy(proc, spec, output)
        log(f"{spec.name}: healthy after {run.startup_s:.1f} s")
        run.answer = predict_once(spec, image, expect)
        log(f"{spec.name}: POST / -> {json.dumps(run.answer)}")
        if args.warmup > 0:
            log(f"{spec.name}: warm-up {args.warmup} s at {WARMUP_CONNECTIONS} connections")
            run_wrk(spec.url, image, WARMUP_CONNECTIONS, args.warmup)
        for conns in args.connections:
            if proc.poll() is not None:
                raise BenchError(f"exited with code {proc.returncode} during the run\n{output()}")
            time.sleep(1.0)  # let sockets from the previous level drain
            cpu_before = cpu_seconds(proc.pid)
            split: list[int] = []
            midway = lambda: split.extend(connections_per_process(proc.pid, spec.port))  # noqa: E731
            threads, r = run_wrk(spec.url, image, conns, args.duration, midway)
            cpu_us = (cpu_seconds(proc.pid) - cpu_before) / max(r["requests"], 1) * 1e6
            nprocs, rss, pss = memory_of(proc.pid)
            load = LoadResult(conns, threads, r["rps"], r["p50_ms"], r["p99_ms"], r["requests"],
                              r["errors"], rss, pss, nprocs, cpu_us, split)
            run.loads.append(load)
            log(f"{spec.name}: c={conns:<3} {load.rps:9.1f} req/s  p50 {load.p50_ms:8.2f} ms  "
                f"p99 {load.p99_ms:8.2f} ms  errors {load.error_total}  CPU {cpu_us:.0f} us/req  "
                f"RSS {rss:.0f} MB ({nprocs} procs)  connections per process {'/'.join(map(str, split))}")
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} during the run\n{output()}")
    except BenchError as exc:
        run.failure = str(exc)
        log(f"{spec.name}: FAILED: {exc}")
    finally:
        stop_server(proc, run)
        if run.stop_s is not None:
            log(f"{spec.name}: stopped {run.stop_s:.1f} s after SIGTERM")
    return run


# ---------------------------------------------------------------------------------------------
# report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(python: Path) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for p in {list(VERSIONED_PACKAGES)!r}:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=30)
        found = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        found = {}
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        found["wrk"] = ((wrk.stdout or wrk.stderr).splitlines() or ["?"])[0].split(" Copyright")[0].removeprefix("wrk ").strip()
    except (OSError, subprocess.TimeoutExpired):
        found["wrk"] = None
    return found


def missing_modules(python: Path, modules: list[str]) -> list[str]:
    """The modules of `modules` that `python` cannot find (all of them if it does not run)."""
    if not modules:
        return []
    code = ("import importlib.util, json, sys\n"
            "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))\n")
    try:
        out = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True,
                             timeout=30, cwd=REPO)
        return list(json.loads(out.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return list(modules)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "no commit yet"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True, timeout=10)
        return rev.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def sha256_short(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def fmt_errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    parts = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
    return f"**{total}** ({parts})"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def render(runs: list[ServerRun], args: argparse.Namespace, meta: dict) -> str:
    out: list[str] = []
    w = out.append
    w(f"- Date: {meta['date']}")
    w(f"- Host: {meta['cpu']}, {meta['cores']} cores, {meta['mem']}, Linux {platform.release()}, "
      f"load average before the run {meta['loadavg']}")
    w(f"- Revision: {meta['git']}")
    v = meta["versions"]
    shown = ", ".join(f"{k} {v[k]}" for k in ("python", *VERSIONED_PACKAGES, "wrk") if v.get(k))
    w(f"- Versions: {shown}")
    w(f"- Model: `{rel(meta['model'])}` (sha256 {meta['model_sha']}); request: POST / multipart "
      f"`images` = `{rel(meta['image'])}` ({meta['image_bytes']} bytes)")
    w(f"- Load: wrk on the same host over 127.0.0.1, threads = min(connections, 2), "
      f"{args.duration} s per level, `--latency --timeout {WRK_TIMEOUT}`, {args.warmup} s warm-up "
      f"at {WARMUP_CONNECTIONS} connections; {args.workers} workers per server; servers run one at a time")
    w("- Servers:")
    for run in runs:
        w(f"  - {run.name}: `{run.command}`")
    w("")

    w("| server | connections | per worker | req/s | p50 ms | p99 ms | errors | CPU us/req | RSS MB | PSS MB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        for ld in run.loads:
            w(f"| {run.name} | {ld.connections} | {'/'.join(map(str, ld.split)) or '?'} | {ld.rps:.1f} | "
              f"{ld.p50_ms:.2f} | {ld.p99_ms:.2f} | {fmt_errors(ld.errors)} | {ld.cpu_us:.0f} | "
              f"{ld.rss_mb:.0f} | {ld.pss_mb:.0f} |")
        if run.failure:
            w(f"| {run.name} | FAILED | | | | | | | | |")
    w("")
    w("per worker = wrk's connections each server process held halfway through the level (from "
      "/proc): the kernel decides this split when wrk connects, and the busier worker sets the p99. "
      "errors = wrk socket errors (connect/read/write/timeout) + non-2xx answers; requests that "
      f"timed out (no answer within {WRK_TIMEOUT}) are not in the latency percentiles. "
      "CPU us/req = the server's CPU time (user + system, master + workers, all threads) during "
      "the level, per request served: steadier than req/s on a shared machine, as wrk's own CPU "
      "is not in it. "
      "RSS = summed over master + workers after each level (counts pages shared between forked "
      "workers once per process); PSS splits shared pages, so it adds up to the real footprint.")
    w("")

    by_name = {r.name: r for r in runs}
    m, b = by_name.get("maserve"), by_name.get("baseline")
    if m and b and m.loads and b.loads:
        b_loads = {ld.connections: ld for ld in b.loads}
        w("| connections | req/s ratio maserve/baseline (higher is better) | p99 ratio maserve/baseline (lower is better) |")
        w("|---:|---:|---:|")
        for ld in m.loads:
            bl = b_loads.get(ld.connections)
            if bl:
                w(f"| {ld.connections} | {ratio(ld.rps, bl.rps)} | {ratio(ld.p99_ms, bl.p99_ms)} |")
        w("")

    # Each other variant against maserve at the same connection count: this picks the worker class.
    others = [r for r in runs if r.name != "maserve" and r.loads]
    if m and m.loads and others:
        w("Each server relative to maserve (req/s variant/maserve, higher is better; p99 in "
          "parentheses, variant/maserve, lower is better):")
        w("")
        w("| connections | " + " | ".join(r.name for r in others) + " |")
        w("|---:|" + "---:|" * len(others))
        other_loads = {r.name: {ld.connections: ld for ld in r.loads} for r in others}
        for ld in m.loads:
            cells = []
            for r in others:
                ol = other_loads[r.name].get(ld.connections)
                cells.append(f"{ratio(ol.rps, ld.rps)} ({ratio(ol.p99_ms, ld.p99_ms)})" if ol else "n/a")
            w(f"| {ld.connections} | " + " | ".join(cells) + " |")
        w("")

    w(f"Targets (stated, not asserted) at {TARGET_CONNECTIONS} connections:")
    w("")
    m64 = next((ld for ld in (m.loads if m else []) if ld.connections == TARGET_CONNECTIONS), None)
    b64 = next((ld for ld in (b.loads if b else []) if ld.connections == TARGET_CONNECTIONS), None)
    if m64 and b64:
        ok = m64.rps >= TARGET_RPS_RATIO * b64.rps and m64.error_total == 0
        w(f"- {'PASS' if ok else 'MISS'}: maserve >= {TARGET_RPS_RATIO}x baseline req/s with zero errors "
          f"(got {ratio(m64.rps, b64.rps)}, {m64.error_total} errors)")
    else:
        w(f"- n/a: maserve >= {TARGET_RPS_RATIO}x baseline req/s with zero errors (needs both servers at "
          f"{TARGET_CONNECTIONS} connections)")
    if m64:
        ok = m64.p99_ms < TARGET_P99_MS
        w(f"- {'PASS' if ok else 'MISS'}: maserve p99 < {TARGET_P99_MS:.0f} ms (got {m64.p99_ms:.2f} ms)")
    else:
        w(f"- n/a: maserve p99 < {TARGET_P99_MS:.0f} ms (maserve not measured at {TARGET_CONNECTIONS} connections)")
    w("")

    w("Checks:")
    w("")
    for run in runs:
        bits = []
        if run.answer is not None:
            bits.append(f"POST / answered `{json.dumps(run.answer)}`")
        if run.startup_s is not None:
            bits.append(f"healthy {run.startup_s:.1f} s after start")
        if run.stop_s is not None:
            bits.append(f"exited {run.stop_s:.1f} s after SIGTERM")
        if run.stop_note:
            bits.append(run.stop_note)
        if run.failure:
            bits.append("FAILED: " + run.failure.splitlines()[0])
        w(f"- {run.name}: " + "; ".join(bits))
    answers = {r.name: r.answer for r in runs if r.answer is not None}
    if len({json.dumps(a, sort_keys=True) for a in answers.values()}) > 1:
        w("- WARNING: the servers disagree: " + ", ".join(f"{k} {v!r}" for k, v in answers.items()))
    return "\n".join(out) + "\n"


def reproduce_line(argv: list[str]) -> str:
    cmd = shlex.join([".venv/bin/python", "bench/run.py", *argv])
    makefile = REPO / "Makefile"
    try:
        text = makefile.read_text() if makefile.is_file() else ""
    except OSError:
        text = ""
    # `make bench` runs `bench/run.py --output bench/RESULTS.md`: mention it when that is what ran.
    if re.search(r"^bench\s*:", text, re.M) and argv in (["--output", "bench/RESULTS.md"], ["--output=bench/RESULTS.md"]):
        return f"`make bench` (that is, `{cmd}`)"
    return f"`{cmd}`"


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk load per connection count (default 10)")
    p.add_argument("--connections", default="1,8,64", help="comma-separated connection counts (default 1,8,64)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2, the cores of the target flavour)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of wrk warm-up before measuring (default 3, 0 = none)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                       help=f"comma-separated servers to run, among {', '.join(SERVERS)}, or `all` "
                            f"(default {','.join(DEFAULT_SERVERS)}); they run in that order, one at a time")
    which.add_argument("--only", choices=SERVERS, help="benchmark one server only (= --servers NAME)")
    p.add_argument("--model-dir", type=Path, default=REPO / "examples" / "mnist",
                   help="model folder given to both servers (model.onnx, preprocess.py, config.json)")
    p.add_argument("--image", type=Path, default=REPO / "examples" / "mnist" / "samples" / "digit_7.png",
                   help="PNG uploaded as the `images` field (default examples/mnist/samples/digit_7.png)")
    p.add_argument("--expect", default="auto",
                   help="digit the check request must return: auto (from a digit_N file name), none, or 0-9")
    p.add_argument("--venv", type=Path, default=REPO / ".venv",
                   help="venv holding maserve, gunicorn, flask, gevent, starlette, python-multipart")
    p.add_argument("--output", type=Path, help="also write the report there (e.g. bench/RESULTS.md)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the servers' stdout/stderr logs (maserve's access log) after the run")
    args = p.parse_args(argv)
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections takes comma-separated integers, e.g. 1,8,64")
    if not args.connections or any(c < 1 or c > 10000 for c in args.connections):
        p.error("--connections: each count must be 1..10000")
    if not 1 <= args.duration <= 3600:
        p.error("--duration must be 1..3600 seconds")
    if not 0 <= args.warmup <= 600:
        p.error("--warmup must be 0..600 seconds")
    if not 1 <= args.workers <= 64:
        p.error("--workers must be 1..64")
    if args.only:
        args.servers = [args.only]
    else:
        wanted = [n.strip() for n in args.servers.split(",") if n.strip()]
        if wanted == ["all"]:
            wanted = list(SERVERS)
        unknown = [n for n in wanted if n not in SERVERS]
        if unknown or not wanted:
            p.error(f"--servers: unknown {', '.join(unknown) or '(empty)'}; choose among {', '.join(SERVERS)} or all")
        args.servers = [n for n in SERVERS if n in wanted]  # fixed order, no duplicates
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    model_dir, image, venv_bin = args.model_dir.resolve(), args.image.resolve(), args.venv.resolve() / "bin"

    if args.expect == "auto":
        found = re.search(r"digit_(\d)", image.name)
        expect = int(found.group(1)) if found else None
    elif args.expect == "none":
        expect = None
    elif args.expect.isdigit() and 0 <= int(args.expect) <= 9:
        expect = int(args.expect)
    else:
        print("--expect must be auto, none or a digit 0-9", file=sys.stderr)
        return 2

    names = args.servers
    problems = []
    if not shutil.which("wrk"):
        problems.append("wrk is not on PATH (Debian/Ubuntu: apt-get install -y wrk)")
    if not image.is_file():
        problems.append(f"no image at {image} (pass --image PATH to a 28x28 PNG digit)")
    for needed in ("model.onnx", "preprocess.py"):
        if not (model_dir / needed).is_file():
            problems.append(f"no {needed} in {model_dir} (pass --model-dir)")
    for binary in sorted({venv_bin / ("maserve" if n == "maserve" else "gunicorn") for n in names}):
        if not binary.is_file():
            hint = " (pip install -e '.[bench]' in the venv, or run with --servers baseline)" if binary.name == "maserve" else ""
            problems.append(f"{binary} not found{hint}")
    modules = sorted({mod for n in names for mod in SERVER_MODULES[n]})
    missing = missing_modules(venv_bin / "python", modules)
    if missing:
        problems.append(f"not importable in {venv_bin / 'python'}: {', '.join(missing)} "
                        "(pip install -e '.[bench]' in the venv, or leave out the servers that need them)")
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        return 2

    # Turn SIGTERM/SIGHUP into SystemExit (and SIGINT into KeyboardInterrupt, even when started
    # with SIGINT ignored) so the finally blocks stop the servers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = re.search(r"MemTotal:\s+(\d+)", meminfo)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "mem": f"{int(mem_kb.group(1)) / 1048576:.1f} GiB RAM" if mem_kb else "RAM unknown",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git": git_revision(),
        "versions": versions(venv_bin / "python"),
        "model": model_dir / "model.onnx",
        "model_sha": sha256_short(model_dir / "model.onnx"),
        "image": image,
        "image_bytes": image.stat().st_size,
    }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: the machine is not idle (load average {meta['loadavg']}): numbers will be noisy")
    if cores != args.workers:
        log(f"note: {args.workers} workers per server on {cores} usable cores")

    runs: list[ServerRun] = []
    with tempfile.TemporaryDirectory(prefix="maserve-bench-") as tmp:
        logdir = tmp
        if args.keep_logs:
            logdir = tempfile.mkdtemp(prefix="maserve-bench-logs-")
            log(f"server logs in {logdir}")
        for name in names:  # one after the other, never both at once
            spec = server_spec(name, venv_bin, model_dir, args.workers)
            runs.append(bench_server(spec, args, image, expect, logdir))
            if name != names[-1]:
                time.sleep(2.0)  # let the machine settle between servers

    report = render(runs, args, meta)
    print(report)
    failed = [r.name for r in runs if r.failure]
    if args.output:
        if failed:
            log(f"not writing {args.output}: {', '.join(failed)} failed")
        else:
            header = (
                "# maserve vs baseline: loopback benchmark\n\n"
                "Generated by `bench/run.py` (see bench/README.md). Reproduce from the repository root with "
                f"{reproduce_line(argv)}.\n\n"
            )
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(header + report)
            log(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # the servers were stopped on the way out
        log("interrupted")
        sys.exit(130)
