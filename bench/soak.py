#!/usr/bin/env python3
"""Soak: MNIST under 64 connections for 10 minutes; does anything grow?

Starts `maserve serve examples/mnist` (2 workers), warms it up with 30 s of the same load, then
runs wrk for --minutes and samples, every --every seconds, each worker's RSS and open file
descriptors (from /proc). The goal (issue 14): flat after the warm-up, under 5% growth from the
first sample to the last, and zero errors. Not part of CI: it takes the machine for 10 minutes.

    .venv/bin/python bench/soak.py                                  # 10 minutes
    .venv/bin/python bench/soak.py --minutes 1 --every 5            # a quick look
    .venv/bin/python bench/soak.py --output RELIABILITY.md          # replaces the soak section there
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from faults import IMAGE, Server  # noqa: E402  (maserve on MNIST, started and stopped)
from load import run_wrk  # noqa: E402
from servers import HOST  # noqa: E402

BEGIN, END = "<!-- bench/soak.py -->", "<!-- /bench/soak.py -->"
GOAL = 0.05


def sample(pids: set[int]) -> dict[int, tuple[float, int, int]]:
    """pid → (RSS MB, open sockets, other open descriptors). Sockets follow the load's connections
    (wrk's 64 spread over the workers as the kernel hands them out); the rest must not move."""
    out = {}
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            sockets = other = 0
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                sockets += target.startswith("socket:")
                other += not target.startswith("socket:")
            out[pid] = (rss_kb / 1024, sockets, other)
        except (OSError, StopIteration):
            pass
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples [30]")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    seconds = int(args.minutes * 60)
    server = Server({"MASERVE_LOG_FORMAT": "json"})
    try:
        url = f"http://{HOST}:{server.port}/"
        print("[soak] warm-up: 30 s", file=sys.stderr, flush=True)
        run_wrk(url, IMAGE, 64, 30)
        workers = server.workers()
        samples: list[tuple[float, dict[int, tuple[float, int]]]] = []
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(run_wrk(url, IMAGE, 64, seconds)[1]))
        started = time.monotonic()
        thread.start()
        while thread.is_alive():
            samples.append((time.monotonic() - started, sample(workers)))
            print(f"[soak] {samples[-1][0]:5.0f} s {samples[-1][1]}", file=sys.stderr, flush=True)
            thread.join(timeout=args.every)
        samples.append((time.monotonic() - started, sample(workers)))
        replaced = workers != server.workers()
    finally:
        server.stop()
    text = render(args, result, samples, replaced)
    print(text)
    if args.output:
        report.replace_section(args.output, text, BEGIN, END)
    return 0


def render(args: argparse.Namespace, result: dict, samples: list, replaced: bool) -> str:
    first, last = samples[0][1], samples[-1][1]
    errors = sum(result["errors"].values())
    lines = [
        BEGIN,
        "## Soak (bench/soak.py)",
        "",
        f"Revision {report.git_revision()}, {report.cpu_model()}. `bench/soak.py --minutes {args.minutes:g}`: "
        f"maserve on examples/mnist, 2 workers, wrk with 64 connections for {args.minutes:g} minutes after "
        f"a 30 s warm-up; {result['requests']:,} requests ({result['rps']:,.0f} req/s), {errors} errors "
        f"({result['errors']}), p99 {result['p99_ms']:.1f} ms; workers replaced during the run: "
        f"{'yes' if replaced else 'none'}.",
        "",
        "| worker | RSS MB at start | RSS MB at end | growth | sockets at start | at end | other descriptors at start | at end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    flat = True
    for pid, (rss0, sockets0, other0) in first.items():
        rss1, sockets1, other1 = last.get(pid, (float("nan"), -1, -1))
        growth = rss1 / rss0 - 1
        worst = max(worst, growth)
        # other descriptors exactly flat; sockets within the load's connections plus the listener
        flat &= other1 == other0 and sockets1 <= 64 + 8
        lines.append(f"| {pid} | {rss0:.1f} | {rss1:.1f} | {growth:+.1%} | {sockets0} | {sockets1} | {other0} | {other1} |")
    verdict = "met" if worst < GOAL and errors == 0 and flat else "NOT met"
    lines += ["", f"Goal (RSS growth < {GOAL:.0%}, descriptors flat, zero errors): {verdict}; largest RSS growth "
              f"{worst:+.1%}. Samples every {args.every:g} s (RSS MB per worker): "
              + "; ".join(f"{t:.0f} s: " + "/".join(f"{v[0]:.1f}" for v in s.values()) for t, s in samples[::4]) + ".",
              END]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
