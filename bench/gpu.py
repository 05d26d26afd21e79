#!/usr/bin/env python3
"""examples/resnet on a GPU: maserve serving it on the GPU, against maserve serving it on this
machine's CPU, and against onnxruntime in process on the GPU (what the server costs on top).

    python3 bench/gpu.py                          # a GPU machine with this repo copied: a few minutes
    python3 bench/gpu.py --dry-run                # anywhere: what would run, whether a GPU is visible
    python3 bench/gpu.py --cpu-only --seconds 3   # anywhere: the CPU half, to try the harness
    python3 bench/gpu.py --out results.json --wheels /path/to/wheels   # offline: wheels brought along

Steps: (1) a GPU? (`nvidia-smi -L`; none: say so and stop, unless --cpu-only); (2) a Python with
maserve and onnxruntime-gpu: this one if it has the CUDA provider, else a venv (--venv) with
`pip install -e .`, then onnxruntime swapped for onnxruntime-gpu[cuda,cudnn] (from PyPI, or
--wheels DIR with no index); (3) examples/resnet/model.onnx built if missing (onnx, no torch);
(4) in process on the GPU: batches of 1/8/64 random images, with maserve's session
(maserve.onnx: cuDNN's heuristic convolution search) and with onnxruntime's default (exhaustive
search), images/s, the p99 of a batch and the first call of each batch size; (5) `maserve serve
examples/resnet` with MASERVE_DEVICE=cuda and MASERVE_REQUIRE_ACCELERATOR=1: every session line
must name CUDAExecutionProvider, then 1/8/64 connections POSTing samples/sample.jpg (wrk with
bench/multipart.lua, else a Python client) for --seconds each: requests/s, p50, p99, errors,
mean batch (maserve_batch_size from /metrics); (6) the same served with MASERVE_DEVICE=cpu (a
worker per core). Prints Markdown tables; --out writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "examples" / "resnet"
SAMPLE = MODEL_DIR / "samples" / "sample.jpg"
LUA = REPO / "bench" / "multipart.lua"
BOUNDARY = "----maservegpubench7f3a"
CUDA = "CUDAExecutionProvider"


def say(message: str) -> None:
    print(f"bench/gpu: {message}", file=sys.stderr, flush=True)


# -- (1) the GPU, (2) the Python --------------------------------------------------------------------
def gpus() -> list[str]:
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in done.stdout.splitlines() if line.startswith("GPU ")] if done.returncode == 0 else []


def driver() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def providers(python: str) -> list[str] | None:
    """onnxruntime's providers in `python` when it also has maserve, else None."""
    code = "import maserve, onnxruntime as o, json; print(json.dumps(o.get_available_providers()))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def pip(python: str, *args: str, wheels: Path | None) -> None:
    index = ["--no-index", "--find-links", str(wheels)] if wheels else []
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *index, *args]
    say("$ " + " ".join(command))
    subprocess.run(command, check=True, timeout=3600)


def gpu_python(args: argparse.Namespace) -> str:
    """An interpreter with maserve and onnxruntime-gpu: this one, else --venv, made if need be."""
    for python in (args.python, sys.executable, str(Path(args.venv) / "bin" / "python")):
        if python and Path(python).exists() and CUDA in (providers(python) or []):
            return python
    if args.no_install:
        raise SystemExit("bench/gpu: no Python here has maserve and onnxruntime-gpu (--no-install given)")
    venv = Path(args.venv)
    say(f"making {venv} with maserve and onnxruntime-gpu[cuda,cudnn]")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
    python = str(venv / "bin" / "python")
    pip(python, "-e", str(REPO), "onnx", wheels=args.wheels)
    # Both packages own the module `onnxruntime`: the CPU one goes first, then the GPU one alone.
    subprocess.run([python, "-m", "pip", "uninstall", "--yes", "--quiet", "onnxruntime"], check=True, timeout=600)
    pip(python, "onnxruntime-gpu[cuda,cudnn]", wheels=args.wheels)
    found = providers(python) or []
    if CUDA not in found:
        raise SystemExit(f"bench/gpu: onnxruntime-gpu installed, yet its providers are {found}")
    return python


def ensure_model(python: str) -> None:
    if not (MODEL_DIR / "model.onnx").is_file():
        say("building examples/resnet/model.onnx (about a second)")
        subprocess.run([python, str(MODEL_DIR / "build_model.py")], check=True, timeout=600, cwd=REPO)


# -- (4) in process -----------------------------------------------------------------------------------
def inprocess(python: str, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    """Runs `_inprocess` below in `python` (the one with onnxruntime-gpu)."""
    done = subprocess.run([python, __file__, "_inprocess", ",".join(map(str, batches)), str(seconds)],
                          capture_output=True, text=True, timeout=1800, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench/gpu: in-process run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inprocess(batches: list[int], seconds: float) -> None:
    import numpy as np
    import onnxruntime as ort

    from maserve.onnx import onnx_session

    path = MODEL_DIR / "model.onnx"
    plain = ort.SessionOptions()
    plain.intra_op_num_threads = 1
    sessions = {
        "maserve (heuristic)": onnx_session(path, device="cuda:0", require=True),
        "onnxruntime default (exhaustive)": ort.InferenceSession(str(path), plain, providers=[CUDA, "CPUExecutionProvider"]),
    }
    rows = []
    for name, session in sessions.items():
        assert CUDA in session.get_providers(), (name, session.get_providers())
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
            started = time.perf_counter()
            session.run(None, {"images": x})
            first = time.perf_counter() - started
            times = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 5:
                t0 = time.perf_counter()
                session.run(None, {"images": x})
                times.append(time.perf_counter() - t0)
            times.sort()
            rows.append({"session": name, "batch": batch, "images_per_s": batch * len(times) / sum(times),
                         "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
                         "first_call_ms": 1000 * first})
    print(json.dumps(rows))


# -- (5, 6) served --------------------------------------------------------------------------------------
def start(python: str, device: str, port: int, workers: int | None, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MASERVE_DEVICE=device, MASERVE_LOG_FORMAT="json", MASERVE_GRACE_SECONDS="0",
               MASERVE_HOST="127.0.0.1", MASERVE_PORT=str(port))
    if device != "cpu":
        env["MASERVE_REQUIRE_ACCELERATOR"] = "1"  # no silent CPU run in the GPU column
    if workers:
        env["MASERVE_WORKERS"] = str(workers)
    with open(log_path, "wb") as log:
        return subprocess.Popen([python, "-m", "maserve", "serve", str(MODEL_DIR)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench/gpu: the server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"bench/gpu: not healthy after {timeout:g} s:\n{log_path.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def device_lines(log_path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("logger") == "maserve.accelerator":
            lines.append(record)
    return lines


def batch_totals(base: str) -> tuple[float, float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    total = re.search(r"^maserve_batch_size_sum(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    count = re.search(r"^maserve_batch_size_count(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


def load(base: str, connections: int, seconds: float, client: str) -> dict[str, Any]:
    if client == "wrk" or (client == "auto" and shutil.which("wrk")):
        out = subprocess.run(["wrk", f"-t{min(connections, max(1, (os.cpu_count() or 2) // 4))}", f"-c{connections}",
                              f"-d{seconds:g}s", "--latency", "--timeout", "60s", "-s", str(LUA), base + "/", "--",
                              str(SAMPLE)], capture_output=True, text=True, timeout=seconds + 120, check=True,
                             cwd=REPO).stdout
        line = next(line for line in out.splitlines() if line.startswith("WRK_JSON "))
        d = json.loads(line[len("WRK_JSON "):])
        errors = d["connect"] + d["read"] + d["write"] + d["timeout"] + d["status"]
        return {"rps": d["requests"] / (d["duration_us"] / 1e6), "p50_ms": d["p50_us"] / 1000,
                "p99_ms": d["p99_us"] / 1000, "errors": errors, "client": "wrk"}
    return python_load(base, connections, seconds)


def python_load(base: str, connections: int, seconds: float) -> dict[str, Any]:
    """Closed-loop keep-alive clients in a few processes (one Python process tops out well below
    what a GPU serves): each connection sends the next request when its answer has come."""
    processes = max(1, min(connections, (os.cpu_count() or 2) // 4, 8))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        parts = pool.starmap(_client, [(base, share, seconds) for share in shares])
    latencies = sorted(x for part in parts for x in part["latencies"])
    count = len(latencies)
    if not count:
        return {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": sum(p["errors"] for p in parts), "client": "python"}
    return {"rps": count / seconds, "p50_ms": 1000 * latencies[count // 2],
            "p99_ms": 1000 * latencies[min(count - 1, int(0.99 * count))],
            "errors": sum(p["errors"] for p in parts), "client": "python"}


def _client(base: str, connections: int, seconds: float) -> dict[str, Any]:
    host, port = base.split("//")[1].split(":")
    data = SAMPLE.read_bytes()
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"sample.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        end = time.perf_counter() + seconds
        writer = None
        while time.perf_counter() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                started = time.perf_counter()
                writer.write(head + body)
                status = await reader.readline()
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    close = close or line.lower().startswith(b"connection: close")
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer = None
                continue
            if b" 200 " in status:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            if close:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(connections)))

    asyncio.run(main())
    return {"latencies": latencies, "errors": errors}


def served(python: str, device: str, args: argparse.Namespace, workers: int | None) -> dict[str, Any]:
    port = args.port + (0 if device == "cpu" else 1)
    base = f"http://127.0.0.1:{port}"
    log_path = Path(args.log_dir) / f"serve-{device.replace(':', '')}.log"
    say(f"serving examples/resnet with MASERVE_DEVICE={device} (log {log_path})")
    proc = start(python, device, port, workers, log_path)
    try:
        wait_healthy(proc, base, log_path)
        lines = device_lines(log_path)
        sessions = [r for r in lines if "providers" in r]
        if device != "cpu" and (not sessions or any(CUDA not in r["providers"] for r in sessions)):
            raise SystemExit(f"bench/gpu: a session is not on the GPU: {json.dumps(lines, indent=1)}")
        started = next((json.loads(line) for line in log_path.read_text().splitlines()
                        if '"maserve started"' in line), {})
        rows = []
        load(base, 4, min(args.seconds, 3.0), args.client)  # warm-up: every batch size's first call
        for connections in args.connections:
            before = batch_totals(base)
            result = load(base, connections, args.seconds, args.client)
            after = batch_totals(base)
            batches = after[1] - before[1]
            result.update(connections=connections, mean_batch=(after[0] - before[0]) / batches if batches else None)
            rows.append(result)
            say(f"  {device} c={connections}: {result['rps']:.1f} req/s, p99 {result['p99_ms']:.1f} ms")
        return {"device": device, "workers": started.get("workers"), "rows": rows,
                "placements": [r.get("device") for r in lines if "worker" in r],
                "providers": sorted({r["providers"] for r in sessions})}
    finally:
        stop(proc)


# -- the report -------------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    out = [f"GPU: {results.get('gpu') or 'none'}; onnxruntime providers: {results.get('providers')}", ""]
    if results.get("inprocess"):
        out += ["In process (random input, one session):", "",
                "| session | batch | images/s | p99 of a batch | first call |", "|---|---:|---:|---:|---:|"]
        out += [f"| {r['session']} | {r['batch']} | {r['images_per_s']:.1f} | {r['p99_ms']:.1f} ms | "
                f"{r['first_call_ms']:.0f} ms |" for r in results["inprocess"]]
        out.append("")
    for run in results.get("served", []):
        out += [f"Served, MASERVE_DEVICE={run['device']}, {run['workers']} workers on {run['placements']}:", "",
                "| connections | req/s | p50 | p99 | errors | mean batch |", "|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['connections']} | {r['rps']:.1f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['errors']} | "
                f"{r['mean_batch']:.1f} |" if r["mean_batch"] is not None else
                f"| {r['connections']} | {r['rps']:.1f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['errors']} | - |"
                for r in run["rows"]]
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would run, and stop")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU-served half (works without a GPU)")
    parser.add_argument("--python", help="an interpreter with maserve and onnxruntime-gpu [this one, else --venv]")
    parser.add_argument("--venv", default="/tmp/maserve-gpu-venv", help="made when no Python has onnxruntime-gpu")
    parser.add_argument("--wheels", type=Path, help="install from this directory alone (no index)")
    parser.add_argument("--no-install", action="store_true", help="never make the venv")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load point [10]")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--batches", default="1,8,64", help="in-process batch sizes [1,8,64]")
    parser.add_argument("--gpu-workers", type=int, help="MASERVE_WORKERS on the GPU [maserve's default]")
    parser.add_argument("--cpu-workers", type=int, help="MASERVE_WORKERS on the CPU [maserve's default: the cores]")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--port", type=int, default=18190)
    parser.add_argument("--log-dir", default="/tmp", help="the servers' logs [/tmp]")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    found = gpus()
    if args.dry_run:
        with_gpu = [p for p in (args.python, sys.executable) if p and CUDA in (providers(p) or [])]
        model = MODEL_DIR / "model.onnx"
        steps = ([] if args.cpu_only else ["in process on cuda:0", "served, MASERVE_DEVICE=cuda"])
        print(f"GPUs (nvidia-smi -L): {found or 'none visible'}")
        print(f"Python with onnxruntime-gpu: {with_gpu[0] if with_gpu else f'none: would make {args.venv}'}")
        print(f"model: {model} ({'present' if model.is_file() else 'would be built'})")
        print(f"load client: {'wrk' if args.client != 'python' and shutil.which('wrk') else 'python'}; "
              f"{args.seconds:g} s at {args.connections} connections; in-process batches {batches}")
        print(f"would run: {'; '.join(steps + ['served, MASERVE_DEVICE=cpu'])}")
        return 0
    if not found and not args.cpu_only:
        say("no GPU visible (nvidia-smi -L lists none): nothing to measure on a GPU here; "
            "--cpu-only measures the CPU half, --dry-run shows the plan")
        return 0
    results: dict[str, Any] = {"gpu": driver() or None, "served": []}
    if args.cpu_only:
        python = args.python or sys.executable
        if providers(python) is None:
            raise SystemExit(f"bench/gpu: {python} has no maserve (pip install -e .)")
    else:
        python = gpu_python(args)
    results["providers"] = providers(python)
    ensure_model(python)
    if not args.cpu_only:
        results["inprocess"] = inprocess(python, batches, args.seconds / 2)
        results["served"].append(served(python, "cuda", args, args.gpu_workers))
    results["served"].append(served(python, "cpu", args, args.cpu_workers))
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_inprocess":
        sys.path.insert(0, str(REPO / "src"))
        _inprocess([int(b) for b in sys.argv[2].split(",")], float(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
