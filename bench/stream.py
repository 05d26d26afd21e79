#!/usr/bin/env python3
"""Streaming: 64 concurrent SSE streams of the chat model through maserve, against the limit, the
same model generating in process with the same concurrency on the same cores.

- served: one maserve server (--workers, default 2) of examples/chat; C client streams (asyncio,
  uvloop, raw sockets: a lean client, so the cores go to the server) each send the OpenAI
  streaming request and read its events, --streams in all (C at a time);
- in process (the limit): --workers processes, each holding C/workers of the model's generators
  at once and advancing them round-robin, one item per turn: no HTTP, no event encoding, no
  scheduling other than the round-robin itself.
Both measure, per stream, the time from its start to its first event (TTFE) and the gaps between
events; reported are p50/p99 of both and the items per second, with the ratios served/in-process
(latency ratios above 1 are the cost of serving). Rounds alternate served and in-process.

    .venv/bin/python bench/stream.py                            # 64 streams at a time, 256 in all
    .venv/bin/python bench/stream.py --output bench/RESULTS.md  # replaces the stream section there
    .venv/bin/python bench/stream.py --before /tmp/before       # and served by another checkout (A/B)

Served rounds also report the server's CPU time per event (every process and thread of the server,
from /proc): steadier than events/s on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (bench/report.py: replace_section)
import run  # noqa: E402  (bench/run.py: revision, CPU model, log)
import servers  # noqa: E402  (bench/servers.py: free_port)

BEGIN, END = "<!-- bench/stream.py -->", "<!-- /bench/stream.py -->"
CHAT_DIR = run.REPO / "examples" / "chat"
URL = "/v1/chat/completions"


def request_body(max_tokens: int) -> dict:
    return {"model": "bytelm", "messages": [{"role": "user", "content": "Tell me a fable about a fox."}],
            "stream": True, "max_tokens": max_tokens, "temperature": 0.8, "seed": 7}


# -- served ---------------------------------------------------------------------------------------
async def _one_stream(port: int, payload: bytes) -> tuple[float, list[float], int]:
    """(TTFE, gaps, events) of one streamed request over a fresh connection."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    writer.write(head + payload)
    first, last, gaps, events = None, started, [], 0
    buffer = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buffer += data
        count = buffer.count(b"\n\n")
        if count:
            buffer = buffer[buffer.rindex(b"\n\n") + 2:]
            if first is None:
                first = now - started
            else:
                gaps.append(now - last)
            gaps += [0.0] * (count - 1)
            last = now
            events += count
        if buffer.endswith(b"0\r\n\r\n"):
            break
    writer.close()
    if first is None:
        raise run.BenchError("a stream ended without an event")
    return first, gaps, events


async def _served(port: int, payload: bytes, concurrency: int, total: int) -> tuple[list[float], list[float], int, float]:
    queue = list(range(total))
    ttfe: list[float] = []
    gaps: list[float] = []
    events = 0

    async def client() -> None:
        nonlocal events
        while queue:
            queue.pop()
            first, more, count = await _one_stream(port, payload)
            ttfe.append(first)
            gaps.extend(more)
            events += count

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return ttfe, gaps, events, time.perf_counter() - started


def served_round(proc: subprocess.Popen, port: int, body: dict, concurrency: int, total: int) -> dict:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    payload = json.dumps(body).encode()
    asyncio.run(_served(port, payload, concurrency, concurrency))  # warm-up: every worker's first streams
    cpu = servers.cpu_seconds(proc.pid)
    ttfe, gaps, events, wall = asyncio.run(_served(port, payload, concurrency, total))
    result = summary(ttfe, gaps, events, wall)
    result["cpu_us"] = (servers.cpu_seconds(proc.pid) - cpu) / max(1, events) * 1e6
    return result


# -- in process -----------------------------------------------------------------------------------
def _generate(args: tuple[dict, int, int]) -> tuple[list[float], list[float], int]:
    body, streams, rounds = args
    from maserve.config import load_config
    from maserve.model import Inputs, load_model

    model = load_model(CHAT_DIR, load_config(CHAT_DIR / "config.json"))
    model.load()
    model.warmup()
    ttfe: list[float] = []
    gaps: list[float] = []
    events = 0
    for _ in range(rounds):
        started = time.perf_counter()
        live = [(model.predict(Inputs(fields=dict(body), url=URL, method="POST")), [None, started])
                for _ in range(streams)]
        while live:
            still = []
            for iterator, state in live:
                try:
                    item = next(iterator)
                except StopIteration:
                    continue
                now = time.perf_counter()
                if state[0] is None:
                    state[0] = now - started
                    ttfe.append(state[0])
                else:
                    gaps.append(now - state[1])
                state[1] = now
                events += item is not None
                still.append((iterator, state))
            live = still
    return ttfe, gaps, events


def in_process_round(body: dict, concurrency: int, total: int, workers: int) -> dict:
    per_worker = concurrency // workers
    rounds = max(1, total // concurrency)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_generate, [(body, per_worker, rounds)] * workers)
    wall = time.perf_counter() - started  # includes the model load: reported rates use generation time
    ttfe = [t for part in parts for t in part[0]]
    gaps = [g for part in parts for g in part[1]]
    events = sum(part[2] for part in parts)
    return summary(ttfe, gaps, events, wall)


# -- report ---------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(ttfe: list[float], gaps: list[float], events: int, wall: float) -> dict:
    busy = statistics.fmean(ttfe) + sum(gaps) / max(1, len(ttfe))  # a stream's mean length
    return {"streams": len(ttfe), "events": events, "ttfe_p50": pct(ttfe, 0.5), "ttfe_p99": pct(ttfe, 0.99),
            "gap_p50": pct(gaps, 0.5), "gap_p99": pct(gaps, 0.99), "stream_s": busy, "wall": wall}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--streams", type=int, default=256, help="streams in all per round [256]")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also serve from the maserve checkout DIR (its src/), e.g. a git worktree: A/B")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    body = request_body(args.max_tokens)
    results: list[dict[str, dict]] = []
    kinds = ["served", *(["before"] if args.before else []), "in-process"]
    for index in range(args.rounds):
        order = kinds if index % 2 == 0 else kinds[::-1]
        got: dict[str, dict] = {}
        for kind in order:
            run.log(f"round {index + 1}: {kind}")
            if kind == "in-process":
                got[kind] = in_process_round(body, args.concurrency, args.streams, args.workers)
                continue
            proc, port = start_chat(args.workers, args.before if kind == "before" else None)
            try:
                got[kind] = served_round(proc, port, body, args.concurrency, args.streams)
            finally:
                stop_chat(proc)
        results.append(got)
    text = render(args, results)
    print(text)
    if args.output:
        report.replace_section(args.output, text, BEGIN, END)
    return 0


def start_chat(workers: int, checkout: Path | None = None) -> tuple[subprocess.Popen, int]:
    """`maserve serve examples/chat` (from `checkout`'s src/ when given) on a free port, once healthy."""
    port = servers.free_port()
    out = tempfile.NamedTemporaryFile(prefix="bench-stream-", suffix=".log", delete=False)
    env = {**os.environ, "MASERVE_HOST": "127.0.0.1", "MASERVE_PORT": str(port), "MASERVE_WORKERS": str(workers),
           "MASERVE_GRACE_SECONDS": "0"}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout.resolve() / "src")
    proc = subprocess.Popen([sys.executable, "-m", "maserve", "serve", str(CHAT_DIR)], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    stop_chat(proc)
    raise run.BenchError(f"the chat server did not become healthy: {Path(out.name).read_text()[-1500:]}")


def stop_chat(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def render(args: argparse.Namespace, results: list[dict[str, dict]]) -> str:
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    before = f"served by {args.before} (revision {run.git_revision(args.before)})" if args.before else ""
    lines = [
        BEGIN,
        "## Streaming: 64 concurrent SSE streams of the chat model (bench/stream.py)",
        "",
        f"Revision {run.git_revision()}, {run.cpu_model()}. examples/chat (a byte-level GRU, onnxruntime, one "
        f"thread per worker), {args.workers} workers; {args.concurrency} streams at a time, {args.streams} per "
        f"round, {args.max_tokens} tokens each (OpenAI `stream: true`, each a `chat.completion.chunk` event). "
        f"In process: {args.workers} processes advancing {args.concurrency // args.workers} generators each "
        "round-robin (no HTTP): the limit. TTFE: start of a stream to its first event; gap: between events; "
        "server CPU: every process and thread of the server per event sent"
        + (f"; before: {before}." if before else "."),
        "",
        "| round | | TTFE p50 ms | TTFE p99 ms | gap p50 ms | gap p99 ms | events/s | server CPU us/event |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"served": "served", "before": "served (before)", "in-process": "in process"}
    ratios, versus = [], []
    for i, got in enumerate(results, 1):
        for kind, name in names.items():
            if kind not in got:
                continue
            r = got[kind]
            r["rate"] = r["events"] / (r["stream_s"] * r["streams"] / args.concurrency)
            cpu = f"{r['cpu_us']:.0f}" if "cpu_us" in r else ""
            lines.append(f"| {i} | {name} | {ms(r['ttfe_p50'])} | {ms(r['ttfe_p99'])} | {ms(r['gap_p50'])} | "
                         f"{ms(r['gap_p99'])} | {r['rate']:,.0f} | {cpu} |")
        served, limit = got["served"], got["in-process"]
        ratios.append({k: served[k] / limit[k] for k in ("ttfe_p50", "ttfe_p99", "gap_p99", "rate")})
        if "before" in got:
            versus.append({k: served[k] / got["before"][k] for k in ("rate", "cpu_us", "gap_p99")})
    med = {k: statistics.median(r[k] for r in ratios) for k in ratios[0]}
    lines += [
        "",
        f"Served / in process (median of rounds): TTFE p50 {med['ttfe_p50']:.2f}x, TTFE p99 {med['ttfe_p99']:.2f}x, "
        f"gap p99 {med['gap_p99']:.2f}x, events/s {med['rate']:.2f}x.",
    ]
    if versus:
        vs = {k: statistics.median(r[k] for r in versus) for k in versus[0]}
        lines.append(f"Served / served before (median of rounds): events/s {vs['rate']:.2f}x, server CPU per event "
                     f"{vs['cpu_us']:.2f}x, gap p99 {vs['gap_p99']:.2f}x.")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
