#!/usr/bin/env python3
"""`maserve batch` throughput against wrk's req/s on the same service at the same concurrency.

One maserve MNIST server (2 workers) is started once, as bench/run.py starts it. Then, in
alternating rounds (wrk, batch, wrk, batch, ...):
  - wrk: the multipart POST of one 28x28 PNG at C connections for --duration seconds;
  - batch: `maserve batch URL --concurrency C` over --files distinct PNG digits (real held-out MNIST
    images) into a fresh destination on the disk (the temporary directory's), then the same into
    one on tmpfs (/dev/shm, where the machine has it); the run creates one file per input, and
    what that costs on this machine's disk (ext4 without a journal) depends on how many files were
    deleted there in the last minutes (10 to 150 us, ~7 us on tmpfs; see file_cost_us), so each
    run's file cost is measured in its own results folder and reported beside it (`--disk-root`
    puts the disk runs on another file system); its rate is the files it answered over its sending time (from its summary line), and its
    wall time from start to exit is given too.
The ratio batch/wrk per round and its median are the result. On this 2-core machine the client
shares the cores with the service in both cases (wrk is a lean C client, maserve batch reads each
file, writes a result file and a manifest line per input, all in Python).

    .venv/bin/python bench/batch.py                         # 5000 files, 64 connections, 2 rounds
    .venv/bin/python bench/batch.py --connections 16 --rounds 3
    .venv/bin/python bench/batch.py --output bench/RESULTS.md   # replaces the batch section there
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (bench/report.py: replace_section)
import run  # noqa: E402  (bench/run.py: server specs, start/stop, wrk, CPU time)

BEGIN, END = "<!-- bench/batch.py -->", "<!-- /bench/batch.py -->"
SUMMARY = re.compile(r"(\d+) request\(s\) in ([\d.]+) s \(([\d.]+)/s\)")


def make_files(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    images = np.load(run.REPO / "examples" / "mnist" / "samples" / "heldout.npz")["images"]
    for i in range(count):
        Image.fromarray(images[i % len(images)]).save(folder / f"{i:05d}.png")


def batch_round(maserve: Path, url: str, src: Path, dest: Path, connections: int) -> dict:
    started = time.monotonic()
    cpu_before = _children_cpu()
    done = subprocess.run([str(maserve), "batch", url, "--config", str(run.REPO / "examples" / "mnist"),
                           "--src-path", str(src), "--dest-path", str(dest), "--concurrency", str(connections)],
                          capture_output=True, text=True, timeout=600, check=False)
    wall = time.monotonic() - started
    match = SUMMARY.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise run.BenchError(f"maserve batch failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-800:]}")
    requests, seconds = int(match[1]), float(match[2])
    client_cpu = (_children_cpu() - cpu_before) / requests * 1e6
    results = next(dest.glob("infer-result-*/"))
    return {"rate": requests / seconds, "wall": wall, "files": requests, "client_cpu_us": client_cpu,
            "file_cost_us": file_cost_us(results)}  # where this run's files went: ext4's cost is per block group


def file_cost_us(root: Path, count: int = 1000) -> float:
    """CPU time (user + kernel) to create, write and rename one small file in `root`, as maserve
    batch does for each result: what the destination's file system charges per input. Measured in
    a run's own results folder after the run (kept until the end: see below). What it measures on
    this machine's disk is mostly ext4's `recently_deleted()`: a file system without a journal skips
    every free inode whose file was deleted in the last 1-5 minutes, reading its inode table block
    to know, so creating files soon after deleting many costs 40-150 us each instead of ~10 (perf:
    30% of the client's samples). Hence nothing is deleted before the last round."""
    import resource

    folder = Path(tempfile.mkdtemp(prefix=".filecost-", dir=root))
    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(count):
        temporary, final = folder / f".{i}.tmp", folder / f"{i}_result.txt"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b'{"mnist_result": 7}')
        os.close(fd)
        os.replace(temporary, final)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / count * 1e6


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=64, help="wrk -c and batch --concurrency [64]")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each wrk round [5]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, help="a markdown file whose batch section is replaced")
    parser.add_argument("--disk-root", type=Path, help="where the disk destinations go [the temporary directory]")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/batch.py: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    venv_bin = Path(sys.executable).parent
    spec = run.server_spec("maserve", venv_bin, run.REPO / "examples" / "mnist", args.workers)
    work = Path(tempfile.mkdtemp(prefix="maserve-bench-batch-"))
    src = work / "in"
    src.mkdir()
    make_files(src, args.files)
    image = src / "00007.png"
    destinations = {"disk": Path(tempfile.mkdtemp(prefix="maserve-bench-batch-", dir=args.disk_root)) if args.disk_root
                    else work}
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        destinations["tmpfs"] = Path(tempfile.mkdtemp(prefix="maserve-bench-batch-", dir=shm))
    os.sync()  # the input files written back now, not during the rounds
    proc = run.start_server(spec, str(work / "server.out"), str(work / "server.err"))
    server = run.ServerRun("maserve")
    rounds: list[tuple[float, dict]] = []
    try:
        run.wait_healthy(proc, spec, lambda: run.server_output(str(work / "server.out"), str(work / "server.err")))
        run.run_wrk(spec.url, image, args.connections, 2)  # warm-up
        for number in range(args.rounds):
            _, wrk = run.run_wrk(spec.url, image, args.connections, args.duration)
            run.log(f"round {number + 1}: wrk {wrk['rps']:.0f} req/s")
            batches = {}
            for where, root in destinations.items():
                os.sync()  # each run starts with nothing dirty: no writeback of the last one's files in its time
                batches[where] = batch_round(venv_bin / "maserve", spec.url, src, root / f"out-{number}",
                                             args.connections)
                done = batches[where]
                run.log(f"round {number + 1}: maserve batch into {where}: {done['rate']:.0f} files/s "
                        f"(wall {done['wall']:.1f} s, client CPU {done['client_cpu_us']:.0f} us/file)")
            rounds.append((wrk["rps"], batches))  # outputs removed at the end: a mass delete slows the next creates
    finally:
        run.stop_server(proc, server)
        for root in destinations.values():
            shutil.rmtree(root, ignore_errors=True)
    text = render(args, rounds)
    print(text)
    if args.output:
        report.replace_section(args.output, text, BEGIN, END)
    return 0


def render(args: argparse.Namespace, rounds: list[tuple[float, dict]]) -> str:
    kinds = list(rounds[0][1]) if rounds else []
    lines = [
        BEGIN,
        "## maserve batch against wrk (bench/batch.py)",
        "",
        f"Revision {run.git_revision()}, {run.cpu_model()}. One maserve MNIST server, {args.workers} workers; "
        f"{args.connections} connections for both; {args.files} distinct PNG digits for maserve batch (file "
        f"mapping: a result file and a manifest line each), one PNG for wrk ({args.duration} s per round); "
        "rounds alternate wrk, batch into a folder on the disk, batch into one on tmpfs.",
        "",
        "| round | wrk req/s | "
        + " | ".join(f"batch → {k}: files/s, ratio, wall, client CPU/file, file cost" for k in kinds) + " |",
        "|---:|---:|" + "---:|" * len(kinds),
    ]
    for i, (wrk, batches) in enumerate(rounds, 1):
        cells = [f"{b['rate']:,.0f}, **{b['rate'] / wrk:.2f}**, {b['wall']:.1f} s, {b['client_cpu_us']:.0f} us, {b['file_cost_us']:.0f} us"
                 for b in batches.values()]
        lines.append(f"| {i} | {wrk:,.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    for kind in kinds:
        ratios = [batches[kind]["rate"] / wrk for wrk, batches in rounds]
        costs = [batches[kind]["file_cost_us"] for _, batches in rounds]
        lines.append(f"- median ratio maserve batch / wrk, results on {kind}: **{statistics.median(ratios):.2f}** "
                     f"(goal >= 0.6); creating one result file in the run's results folder (write, rename) cost "
                     f"{min(costs):.0f}-{max(costs):.0f} us of CPU (file cost, measured there after each run)")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
