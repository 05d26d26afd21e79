"""bench/ load: wrk runs and their parsed results, how wrk's connections split between the
workers, and one server's whole benchmark (start, check, warm up, each connection count, stop)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from servers import (LUA, REPO, WARMUP_CONNECTIONS, WRK_TIMEOUT, _LIBC, BenchError, LoadResult, ServerRun, ServerSpec,
                     _die_with_parent, cpu_seconds, log, memory_of, predict_once, server_output, session_pids,
                     start_server, stop_server, wait_healthy)

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
    return sorted((held for held in connections_per_pid(session_pids(sid), port) if held), reverse=True)


def connections_per_pid(pids: Iterable[int], port: int) -> list[int]:
    """Established TCP connections on `port` (the server's ends) held by each of `pids`, in their
    order, from /proc (tests/test_accept_balance.py uses it too)."""
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
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            counts.append(0)
            continue
        held = 0
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts.append(held)
    return counts


def batch_counts(spec: ServerSpec) -> tuple[float, float] | None:
    """maserve's (sum, count) of batch sizes over its workers from /metrics; None for another server,
    or a maserve without metrics or batching."""
    if not spec.name.startswith("maserve"):
        return None
    try:
        with urllib.request.urlopen(spec.url + "metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return None
    found = [re.search(rf"^maserve_batch_size_{part}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE) for part in ("sum", "count")]
    if not all(found):
        return None
    return float(found[0].group(1)), float(found[1].group(1))  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# one server, start to stop


def bench_server(spec: ServerSpec, args: argparse.Namespace, image: Path, expect: int | None,
                 logdir: str) -> ServerRun:
    run = ServerRun(spec.name, command=shlex.join(spec.argv))
    # stdout to a file, not a pipe nobody reads (maserve writes one log line per request there).
    stem = re.sub(r"[^\w.-]", "_", spec.name)  # a label may hold a checkout's path (NAME@DIR)
    stdout_path = os.path.join(logdir, f"{stem}.stdout.log")
    stderr_path = os.path.join(logdir, f"{stem}.stderr.log")
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
            batches_before = batch_counts(spec)
            cpu_before = cpu_seconds(proc.pid)
            split: list[int] = []
            midway = lambda: split.extend(connections_per_process(proc.pid, spec.port))  # noqa: E731
            threads, r = run_wrk(spec.url, image, conns, args.duration, midway)
            cpu_us = (cpu_seconds(proc.pid) - cpu_before) / max(r["requests"], 1) * 1e6
            nprocs, rss, pss = memory_of(proc.pid)
            load = LoadResult(conns, threads, r["rps"], r["p50_ms"], r["p99_ms"], r["requests"],
                              r["errors"], rss, pss, nprocs, cpu_us, split)
            batches_after = batch_counts(spec)
            if batches_before and batches_after and batches_after[1] > batches_before[1]:
                load.mean_batch = (batches_after[0] - batches_before[0]) / (batches_after[1] - batches_before[1])
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


