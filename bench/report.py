"""bench/ report: the machine and package facts, and the markdown report with its ratios."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shlex
import subprocess
from pathlib import Path

from servers import (REPO, TARGET_CONNECTIONS, TARGET_P99_MS, TARGET_RPS_RATIO, VERSIONED_PACKAGES, WARMUP_CONNECTIONS, WRK_TIMEOUT,
                     ServerRun)

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


def git_revision(checkout: Path = REPO) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "no commit yet"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True,
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




def replace_section(path: Path, report: str, begin: str, end: str) -> None:
    """Put `report` (which starts with `begin` and ends with `end`) in place of that section of
    `path`, or at its end: each benchmark owns one section of bench/RESULTS.md."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + report + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + report + "\n"
    path.write_text(text)
