#!/usr/bin/env python3
"""Server CPU time per request: a steadier measure than req/s on a shared or busy machine.

Starts one server as bench/run.py does, warms it up, then for each round runs wrk for a fixed time
and reads the CPU time (user + system, every thread) of the server's processes from /proc before
and after: CPU us/request = CPU time spent / requests served. With several `--servers`, rounds
alternate between them (A/B/A/B...), each server started once, so a change in the machine's load
hits both alike.

    .venv/bin/python bench/cpu.py                                   # maserve, 3 rounds of 8 s at 64 connections
    .venv/bin/python bench/cpu.py --servers maserve,baseline --rounds 4
    .venv/bin/python bench/cpu.py --servers maserve,maserve@/tmp/old   # A/B against another checkout

`NAME@DIR` runs server NAME from the checkout DIR (its src/ on PYTHONPATH, its examples/mnist as the
model), e.g. a `git worktree` of the commit to compare against. `NAME+VAR=VALUE` sets an environment
variable for it: `--servers maserve,maserve+MASERVE_METRICS_PATH=` compares metrics on and off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: server specs, start/stop, wrk, CPU time)
from servers import labelled_spec  # noqa: E402


@dataclass
class Rounds:
    """One server's measured rounds."""

    label: str
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0


def start(label: str, venv_bin: Path, workers: int, logdir: str) -> tuple[run.ServerSpec, subprocess.Popen]:
    spec = labelled_spec(label, venv_bin, run.REPO / "examples" / "mnist", workers)
    stdout_path = os.path.join(logdir, f"{label.replace('/', '_')}.out")
    stderr_path = os.path.join(logdir, f"{label.replace('/', '_')}.err")
    proc = run.start_server(spec, stdout_path, stderr_path)
    try:
        run.wait_healthy(proc, spec, lambda: run.server_output(stdout_path, stderr_path))
    except BaseException:
        run.stop_server(proc, run.ServerRun(label))
        raise
    return spec, proc


def measure(spec: run.ServerSpec, proc: subprocess.Popen, image: Path, connections: int, seconds: int, into: Rounds) -> None:
    before = run.cpu_seconds(proc.pid)
    _, r = run.run_wrk(spec.url, image, connections, seconds)
    spent = run.cpu_seconds(proc.pid) - before
    into.rps.append(r["rps"])
    into.p99_ms.append(r["p99_ms"])
    into.cpu_us.append(spent / max(r["requests"], 1) * 1e6)
    into.errors += sum(r["errors"].values())
    run.log(f"{into.label}: {r['rps']:8.1f} req/s  p99 {r['p99_ms']:6.2f} ms  {into.cpu_us[-1]:6.1f} CPU us/req")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="maserve", help="comma-separated NAME or NAME@CHECKOUT (default maserve)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per server (default 3)")
    p.add_argument("--duration", type=int, default=8, help="seconds of wrk per round (default 8)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image", type=Path, default=run.REPO / "examples" / "mnist" / "samples" / "digit_7.png")
    args = p.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 1 <= args.duration <= 120 and 1 <= args.connections <= 1000):
        p.error("--rounds 1..50, --duration 1..120, --connections 1..1000")
    labels = [s.strip() for s in args.servers.split(",") if s.strip()]
    venv_bin = run.REPO / ".venv" / "bin"
    started: dict[str, tuple[run.ServerSpec, subprocess.Popen]] = {}
    results = {label: Rounds(label) for label in labels}
    with tempfile.TemporaryDirectory(prefix="maserve-cpu-") as logdir:
        try:
            for label in labels:
                started[label] = start(label, venv_bin, args.workers, logdir)
                run.run_wrk(started[label][0].url, args.image, 8, 3)  # warm-up
            for _ in range(args.rounds):
                for label in labels:
                    spec, proc = started[label]
                    measure(spec, proc, args.image, args.connections, args.duration, results[label])
        finally:
            for label, (_, proc) in started.items():
                run.stop_server(proc, run.ServerRun(label))
    print("| server | req/s (median) | p99 ms (median) | CPU us/request (median) | errors |")
    print("|---|---:|---:|---:|---:|")
    for r in results.values():
        med = statistics.median
        print(f"| {r.label} | {med(r.rps):.0f} | {med(r.p99_ms):.1f} | {med(r.cpu_us):.0f} | {r.errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
