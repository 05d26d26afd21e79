#!/usr/bin/env python3
"""maserve against the serving tools users would pick instead, on a small and a compute-bound model.

For each workload (the MNIST example: the HTTP layer is most of the cost; the ResNet-50 example: the
model is), in one run: the model in process with no server (bench/inprocess.py: the limit), then
every server in turn, two rounds in alternating order (A B C, C B A) so that a drift of the
machine hits all alike, each started, checked to give the reference answer, warmed up and loaded
with wrk at each connection count (bench/load.py), then stopped. The report gives medians over the
rounds, ratios maserve / peer from the same run, and the goals of issue 16 with their outcome.

    .venv/bin/python bench/peers/setup.py            # the peers' own venvs (once)
    .venv/bin/python bench/compare.py --output bench/RESULTS.md
    .venv/bin/python bench/compare.py --workloads resnet --servers maserve,litserve --rounds 1

A server label is a name (maserve, baseline, or a peer of bench/peers/specs.py) with optional
`+VAR=VALUE` environment settings: `maserve+MASERVE_BATCH_BUDGET_SECONDS=0` is maserve batching
as before the batch budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inprocess  # noqa: E402
from load import bench_server  # noqa: E402
from report import cpu_model, git_revision, replace_section  # noqa: E402
from servers import REPO, BenchError, ServerRun, labelled_spec, log  # noqa: E402

try:
    from peers.specs import PEERS, peer_spec  # noqa: E402
except ImportError:  # pragma: no cover - peers not written yet
    PEERS, peer_spec = (), None

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


@dataclass(frozen=True)
class Workload:
    name: str
    model_dir: Path
    image: Path
    duration: int  # seconds of wrk per connection count
    servers: tuple[str, ...]
    layouts: tuple[str, ...]  # in-process layouts measured (PROCESSESxTHREADSxBATCH)


WORKLOADS = {
    "mnist": Workload("mnist", REPO / "examples" / "mnist", REPO / "examples" / "mnist" / "samples" / "digit_7.png", 8,
                      ("maserve", "baseline", *PEERS), ("1x1x1", "1x1x8", "1x1x32")),
    "resnet": Workload("resnet", REPO / "examples" / "resnet", REPO / "examples" / "resnet" / "samples" / "sample.jpg", 12,
                       ("maserve", "maserve+MASERVE_WORKERS=1", "maserve+MASERVE_BATCH_BUDGET_SECONDS=0", "baseline", *PEERS),
                       ("1x1x1", "2x1x1", "1x2x1", "2x1x4", "1x2x4", "2x1x8")),
}


def spec_for(label: str, workload: Workload, venv_bin: Path, workers: int):
    name = label.split("+", 1)[0].split("@", 1)[0]
    if name in PEERS:
        spec = peer_spec(name, workload.model_dir, workers)  # type: ignore[misc]
        spec.env.update(a.split("=", 1) for a in label.split("+")[1:])  # type: ignore[arg-type]
        spec.name = label
        return spec
    spec = labelled_spec(label, venv_bin, workload.model_dir, workers)
    if name == "baseline":
        spec.env["BASELINE_MODEL_DIR"] = str(workload.model_dir)
    return spec


def reference_answer(workload: Workload, venv_python: Path) -> dict:
    """What maserve's model answers for the image, computed in process (the check every server must pass)."""
    code = ("import json, sys\nsys.path.insert(0, sys.argv[3])\nimport inprocess\nfrom pathlib import Path\n"
            "model, _, _ = inprocess._pipeline(Path(sys.argv[1]))\n"
            "print(json.dumps(model.predict(inprocess._inputs(Path(sys.argv[2])))))\n")
    out = subprocess.run([str(venv_python), "-c", code, str(workload.model_dir), str(workload.image), str(REPO / "bench")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "MASERVE_LOG_LEVEL": "warning"})
    if out.returncode != 0:
        raise BenchError(f"the reference answer failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_model(workload: Workload, venv_python: Path) -> None:
    if (workload.model_dir / "model.onnx").is_file():
        return
    build = workload.model_dir / "build_model.py"
    log(f"{workload.name}: building {build.relative_to(REPO)}")
    subprocess.run([str(venv_python), str(build)], check=True, timeout=600)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def merged(runs: list[ServerRun], connections: int) -> dict[str, float]:
    loads = [load for run in runs for load in run.loads if load.connections == connections]
    pick = lambda attr: median([getattr(load, attr) for load in loads])  # noqa: E731
    batches = [load.mean_batch for load in loads if load.mean_batch is not None]
    return {"rps": pick("rps"), "p50": pick("p50_ms"), "p99": pick("p99_ms"), "cpu": pick("cpu_us"),
            "rss": pick("rss_mb"), "errors": sum(load.error_total for load in loads),
            "batch": median(batches) if batches else float("nan")}


def render(workload: Workload, results: dict[str, list[ServerRun]], limits: list[inprocess.Measured],
           connections: list[int]) -> str:
    ok = {label: runs for label, runs in results.items() if runs and not any(r.failure for r in runs)}
    lines = [f"### {workload.name}: `{workload.model_dir.relative_to(REPO)}`, `{workload.image.relative_to(REPO)}`", ""]
    lines += ["In process, no server (bench/inprocess.py; processes x intra-op threads x batch):", "",
              "| layout | images/s | CPU us/image | ms per batch | load + warm-up s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {m.layout} | {m.images_per_s:.1f} | {m.cpu_us_per_image:.0f} | {m.ms_per_batch:.1f} | {m.load_s:.2f} |"
              for m in limits]
    lines += ["", "Served, median of the rounds (req/s; p50, p99 ms; server CPU us per request; RSS MB of all processes; "
              "maserve's mean batch size):", "",
              "| server | connections | req/s | p50 | p99 | errors | CPU us/req | RSS MB | start s | batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, runs in results.items():
        failure = next((r.failure for r in runs if r.failure), None)
        if failure:
            lines.append(f"| {label} | FAILED: {failure.splitlines()[0][:160]} | | | | | | | | |")
            continue
        start = median([r.startup_s for r in runs if r.startup_s is not None])
        for c in connections:
            m = merged(runs, c)
            batch = "" if m["batch"] != m["batch"] else f"{m['batch']:.1f}"
            lines.append(f"| {label} | {c} | {m['rps']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['errors']} | "
                         f"{m['cpu']:.0f} | {m['rss']:.0f} | {start:.1f} | {batch} |")
    for mine in (label for label in ok if label.startswith("maserve")):
        lines += ["", f"Ratios {mine} / server, same run (req/s: above 1 is maserve ahead; p99, CPU, RSS: below 1 is):", "",
                  "| server | connections | req/s | p99 | CPU us/req | RSS |", "|---|---:|---:|---:|---:|---:|"]
        for label in ok:
            if label.startswith("maserve"):
                continue
            for c in connections:
                a, b = merged(ok[mine], c), merged(ok[label], c)
                lines.append(f"| {label} | {c} | {a['rps'] / b['rps']:.2f} | {a['p99'] / b['p99']:.2f} | "
                             f"{a['cpu'] / b['cpu']:.2f} | {a['rss'] / b['rss']:.2f} |")
        lines += ["", *goals(workload, ok, mine, limits, connections)]
    return "\n".join(lines) + "\n"


def goals(workload: Workload, ok: dict[str, list[ServerRun]], label: str, limits: list[inprocess.Measured],
          connections: list[int]) -> list[str]:
    mine = {c: merged(ok[label], c) for c in connections}
    out = [f"Goals of issue 16 for {label}:", ""]
    mark = lambda good: "met" if good else "NOT met"  # noqa: E731
    peers = [label for label in ok if not label.startswith("maserve")]
    for c in connections:
        best = max(peers, key=lambda label: merged(ok[label], c)["rps"], default=None)
        if best is not None:
            theirs = merged(ok[best], c)["rps"]
            out.append(f"- {c} connections: {mine[c]['rps']:.1f} req/s, best other server {best} {theirs:.1f}: "
                       f"{mine[c]['rps'] / theirs:.2f}x ({mark(mine[c]['rps'] > theirs)})")
    if workload.name == "resnet" and limits:
        limit = max(limits, key=lambda m: m.images_per_s)
        top = max(connections)
        share = mine[top]["rps"] / limit.images_per_s
        out.append(f"- images/s at {top} connections: {mine[top]['rps']:.1f} = {share:.0%} of the in-process limit "
                   f"{limit.images_per_s:.1f} ({limit.layout}); goal >= 90% ({mark(share >= 0.9)})")
        fair = top / mine[top]["rps"] * 1000
        out.append(f"- p99 at {top} connections: {mine[top]['p99']:.0f} ms = {mine[top]['p99'] / fair:.2f}x the mean latency "
                   f"that throughput implies ({fair:.0f} ms); goal <= 1.5x ({mark(mine[top]['p99'] <= 1.5 * fair)})")
        workers = next((int(a.split("=")[1]) for a in label.split("+")[1:] if a.startswith("MASERVE_WORKERS=")), None)
        single_layout = f"1x{max(1, (os.cpu_count() or 1) // workers)}x1" if workers else "1x1x1"
        single = next((m for m in limits if str(m.layout) == single_layout), None)
        if single is not None and 1 in mine:
            ratio = mine[1]["p50"] / single.ms_per_batch
            out.append(f"- 1 connection: p50 {mine[1]['p50']:.1f} ms against {single.ms_per_batch:.1f} ms in process ({single.layout}: "
                       f"decode + preprocess + inference): {ratio:.2f}x; goal <= 1.10x ({mark(ratio <= 1.1)})")
    if workload.name == "mnist" and limits:
        by_batch = {m.layout.batch: m for m in limits if m.layout.processes == 1 and m.layout.threads == 1}
        for c in connections:
            batch = mine[c]["batch"]
            size = min(by_batch, key=lambda b: abs(b - (batch if batch == batch else 1)))
            ratio = mine[c]["cpu"] / by_batch[size].cpu_us_per_image
            out.append(f"- overhead at {c} connections: server CPU {mine[c]['cpu']:.0f} us/req over the in-process pipeline's "
                       f"{by_batch[size].cpu_us_per_image:.0f} us/image at batch {size} (maserve's mean batch "
                       f"{batch:.1f}): {ratio:.2f}x; goal <= 1.5x ({mark(ratio <= 1.5)})")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="mnist,resnet")
    p.add_argument("--servers", help="comma-separated labels (default: every server of the workload)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", default="1,8,64")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--duration", type=int, help="seconds of wrk per connection count (default: the workload's)")
    p.add_argument("--inprocess-seconds", type=float, default=5.0)
    p.add_argument("--layouts", help="in-process layouts PxTxB, comma-separated (default: the workload's)")
    p.add_argument("--venv", type=Path, default=REPO / ".venv")
    p.add_argument("--output", type=Path, help="replace the compare section of this markdown file (bench/RESULTS.md)")
    args = p.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",")]
    venv_bin = args.venv.resolve() / "bin"
    sections = []
    started = time.monotonic()
    for name in args.workloads.split(","):
        workload = WORKLOADS[name]
        labels = args.servers.split(",") if args.servers else list(workload.servers)
        ensure_model(workload, venv_bin / "python")
        expect = reference_answer(workload, venv_bin / "python")
        log(f"{name}: reference answer {json.dumps(expect)[:120]}")
        limits = []
        for text in (args.layouts.split(",") if args.layouts else workload.layouts):
            measured = inprocess.measure(workload.model_dir, workload.image, inprocess.Layout.parse(text), args.inprocess_seconds)
            log(f"{name}: in process {text}: {measured.images_per_s:.1f} images/s, {measured.cpu_us_per_image:.0f} CPU us/image")
            limits.append(measured)
        results: dict[str, list[ServerRun]] = {label: [] for label in labels}
        bench_args = argparse.Namespace(warmup=args.warmup, connections=connections,
                                        duration=args.duration or workload.duration)
        with tempfile.TemporaryDirectory(prefix="maserve-compare-") as logdir:
            for round_ in range(args.rounds):
                for label in (labels if round_ % 2 == 0 else labels[::-1]):
                    if any(r.failure for r in results[label]):
                        continue  # failed once: not again
                    try:
                        spec = spec_for(label, workload, venv_bin, args.workers)
                    except (BenchError, OSError, ValueError) as exc:
                        results[label].append(ServerRun(label, failure=str(exc)))
                        continue
                    results[label].append(bench_server(spec, bench_args, workload.image, expect, logdir))
                    time.sleep(2.0)
        sections.append(render(workload, results, limits, connections))
    meta = (f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu_model()} ({os.cpu_count()} cores), "
            f"git {git_revision()}, {args.rounds} rounds in alternating order, {args.workers} workers each, "
            f"{(time.monotonic() - started) / 60:.0f} min. Reproduce: `make bench-peers` "
            f"(`.venv/bin/python bench/compare.py {' '.join(argv)}`).\n\n")
    report = f"{BEGIN}\n## maserve against the serving tools users pick instead\n\n{meta}" + "\n".join(sections) + END
    print(report)
    if args.output:
        replace_section(args.output, report, BEGIN, END)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
