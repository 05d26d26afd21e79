#!/usr/bin/env python3
"""Check that each peer server starts, answers what maserve answers, refuses a bad upload, and
holds up under a short load; print a table. A functional check, not the benchmark.

    .venv/bin/python bench/peers/check_peers.py                       # every peer, both models
    .venv/bin/python bench/peers/check_peers.py --peers ray --models resnet
    .venv/bin/python bench/peers/check_peers.py --maserve             # maserve too, as a reference row

For each peer (bench/peers/specs.py) and model (examples/mnist, examples/resnet), one after the
other: start it (bench/servers.py start_server, own session), wait for its health path to
answer 200, POST the model's sample (`images` field) and compare the JSON with maserve's own
answer for the same file (`maserve predict MODEL_DIR FILE` in the project venv), POST a bad
upload (README.md as `images`) and record the status and body, run wrk for --duration s at
--connections (bench/multipart.lua, the benchmark's request) and read req/s, p50, p99, errors,
the server's CPU per request and its RSS (every process of its session and their
descendants: BentoML's workers call setsid), then stop it (SIGTERM,
bench/servers.py stop_server) and record how long it took.

examples/resnet/model.onnx is built first when missing (examples/resnet/build_model.py in the
project venv, which needs `onnx`: installed there with pip when missing).
Standard library only; the peers run from their venvs (python3 bench/peers/setup.py).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from specs import PEERS, missing_peers, peer_spec  # noqa: E402

from load import run_wrk  # noqa: E402
from servers import (REPO, BenchError, ServerRun, cpu_seconds, memory_of, server_output, server_spec,  # noqa: E402
                     start_server, stop_server, wait_healthy)

PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
MODELS = {
    "mnist": (REPO / "examples" / "mnist", REPO / "examples" / "mnist" / "samples" / "digit_7.png"),
    "resnet": (REPO / "examples" / "resnet", REPO / "examples" / "resnet" / "samples" / "sample.jpg"),
}
BAD_UPLOAD = REPO / "README.md"
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".md": "text/markdown"}


def log(msg: str) -> None:
    print(f"[check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_resnet_model() -> None:
    model = REPO / "examples" / "resnet" / "model.onnx"
    if model.is_file():
        return
    probe = subprocess.run([str(PROJECT_PYTHON), "-c", "import onnx"], capture_output=True)
    if probe.returncode != 0:
        log("installing onnx into .venv (examples/resnet/build_model.py needs it)")
        subprocess.run([str(PROJECT_PYTHON), "-m", "pip", "install", "--quiet", "onnx"], check=True)
    log("building examples/resnet/model.onnx")
    subprocess.run([str(PROJECT_PYTHON), str(REPO / "examples" / "resnet" / "build_model.py")], check=True)


def maserve_answer(model_dir: Path, image: Path) -> object:
    """maserve's own answer for `image`: `maserve predict MODEL_DIR FILE` in the project venv."""
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "maserve"), "predict", str(model_dir), str(image)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    if proc.returncode != 0:
        raise BenchError(f"maserve predict {model_dir.name} {image.name} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def post_file(url: str, path: Path, timeout: float = 30) -> tuple[int, bytes]:
    boundary = "----maservecheck" + uuid.uuid4().hex
    ctype = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_one(name: str, spec, model: str, expected: object, args, logdir: str) -> dict:
    model_dir, image = MODELS[model]
    row = {"peer": name, "model": model, "startup_s": None, "answer_ok": False, "answer": None,
           "bad_status": None, "bad_body": "", "rps": None, "p50_ms": None, "p99_ms": None, "errors": None,
           "cpu_us": None, "rss_mb": None, "nprocs": None, "stop_s": None, "stop_note": "", "failure": None}
    out = os.path.join(logdir, f"{name}-{model}.stdout.log")
    err = os.path.join(logdir, f"{name}-{model}.stderr.log")
    output = lambda: server_output(out, err)  # noqa: E731
    log(f"{name} / {model}: starting: {' '.join(spec.argv)}")
    proc = start_server(spec, out, err)
    run = ServerRun(name)
    try:
        row["startup_s"] = wait_healthy(proc, spec, output)
        status, raw = post_file(spec.url, image)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw[:200].decode(errors="replace")
        row["answer"] = answer
        row["answer_ok"] = status == 200 and answer == expected
        if not row["answer_ok"]:
            log(f"{name} / {model}: POST / answered {status} {str(answer)[:300]}, expected {str(expected)[:300]}")
        status, raw = post_file(spec.url, BAD_UPLOAD)
        row["bad_status"], row["bad_body"] = status, raw[:160].decode(errors="replace")
        time.sleep(0.5)
        cpu0 = cpu_seconds(proc.pid)
        _, r = run_wrk(spec.url, image, args.connections, args.duration)
        cpu_us = (cpu_seconds(proc.pid) - cpu0) / max(r["requests"], 1) * 1e6
        nprocs, rss, _pss = memory_of(proc.pid)
        row.update(rps=r["rps"], p50_ms=r["p50_ms"], p99_ms=r["p99_ms"], errors=sum(r["errors"].values()),
                   cpu_us=cpu_us, rss_mb=rss, nprocs=nprocs)
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} during the load\n{output()}")
        log(f"{name} / {model}: healthy {row['startup_s']:.1f} s, answer {'ok' if row['answer_ok'] else 'WRONG'}, "
            f"bad upload {row['bad_status']}, {row['rps']:.1f} req/s, p99 {row['p99_ms']:.0f} ms, errors {row['errors']}, "
            f"CPU {cpu_us:.0f} us/req, RSS {rss:.0f} MB ({nprocs} procs)")
    except (BenchError, OSError) as exc:
        row["failure"] = str(exc)
        log(f"{name} / {model}: FAILED: {exc}")
    finally:
        stop_server(proc, run)  # its setsid descendants (BentoML's workers) too
        row["stop_s"], row["stop_note"] = run.stop_s, run.stop_note
        if run.stop_note:
            log(f"{name} / {model}: stop: {run.stop_note}")
    return row


def fmt(value, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table(rows: list[dict], args) -> str:
    lines = [
        f"wrk {args.duration} s at {args.connections} connections (bench/multipart.lua), {args.workers} workers each; "
        "CPU = server CPU time per request (every process of its session and their descendants); RSS summed over those processes.",
        "",
        "| peer | model | start-up s | answer ok | bad upload | req/s | p50 ms | p99 ms | errors | CPU us/req | RSS MB (procs) | stop s |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bad = f"{r['bad_status']}" if r["bad_status"] is not None else "-"
        lines.append(
            f"| {r['peer']} | {r['model']} | {fmt(r['startup_s'])} | {'yes' if r['answer_ok'] else 'NO'} | {bad} | "
            f"{fmt(r['rps'])} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['errors'], 'd')} | {fmt(r['cpu_us'], '.0f')} | "
            f"{fmt(r['rss_mb'], '.0f')} ({fmt(r['nprocs'], 'd')}) | {fmt(r['stop_s'])} |")
    lines += ["", "Bad upload (README.md as `images`), what each answered:", ""]
    seen = set()
    for r in rows:
        if r["bad_status"] is None or (r["peer"], r["bad_status"]) in seen:
            continue
        seen.add((r["peer"], r["bad_status"]))
        lines.append(f"- {r['peer']}: {r['bad_status']} `{r['bad_body'].strip()[:150]}`")
    failures = [r for r in rows if r["failure"] or not r["answer_ok"]]
    for r in failures:
        lines.append(f"- FAILED {r['peer']} / {r['model']}: {(r['failure'] or 'wrong answer: ' + str(r['answer']))[:600]}")
    notes = [r for r in rows if r["stop_note"]]
    for r in notes:
        lines.append(f"- stop of {r['peer']} / {r['model']}: {r['stop_note']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, among {', '.join(PEERS)}")
    p.add_argument("--models", default="mnist,resnet", help="comma-separated, among mnist, resnet")
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per peer and model (default 5)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--maserve", action="store_true", help="also run maserve itself, as a reference row")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)")
    args = p.parse_args(argv)
    peers = [n.strip() for n in args.peers.split(",") if n.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in peers if n not in PEERS] + [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"unknown: {', '.join(unknown)}")
    if not shutil.which("wrk"):
        p.error("wrk is not on PATH (apt-get install -y wrk)")
    missing = missing_peers(peers)
    if missing:
        for name, why in missing.items():
            log(f"{name}: {why}")
        return 2
    if "resnet" in models:
        ensure_resnet_model()
    expected = {m: maserve_answer(*MODELS[m]) for m in models}
    for m in models:
        log(f"maserve's answer for {MODELS[m][1].name}: {json.dumps(expected[m])[:200]}")

    rows = []
    logdir = tempfile.mkdtemp(prefix="maserve-peers-check-")
    try:
        for model in models:
            model_dir = MODELS[model][0]
            names = (["maserve"] if args.maserve else []) + peers
            for name in names:
                if name == "maserve":
                    spec = server_spec("maserve", REPO / ".venv" / "bin", model_dir, args.workers)
                else:
                    spec = peer_spec(name, model_dir, args.workers)
                rows.append(check_one(name, spec, model, expected[model], args, logdir))
                time.sleep(1.0)
    finally:
        if args.keep_logs:
            log(f"logs in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    print(table(rows, args))
    return 1 if any(r["failure"] or not r["answer_ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
