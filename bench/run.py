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
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The three layers; cpu.py and batch.py use them as run.NAME (hence the names re-exported here).
from load import bench_server, run_wrk  # noqa: E402,F401
from report import cpu_model, git_revision, missing_modules, render, reproduce_line, sha256_short, versions  # noqa: E402
from servers import (DEFAULT_SERVERS, REPO, SERVER_MODULES, SERVERS, BenchError, ServerRun,  # noqa: E402,F401
                     ServerSpec, cpu_seconds, log, server_output, server_spec, start_server, stop_server,
                     wait_healthy)

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
