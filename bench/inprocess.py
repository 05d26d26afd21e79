"""bench/ in process: a model's own pipeline with no server around it, the limit a server is held to.

The pipeline is the example's own code, loaded as maserve loads it (maserve.model.load_model):
per request `prepare` (decode + preprocess of the uploaded bytes), one `predict_batch` call per
batch (or `predict` per request for a model that does not batch). Each layout (processes x
intra-op threads x batch size) runs in fresh processes (spawned: nothing inherited), every process
back to back for the given seconds after one warm-up batch; images/s is summed over the processes,
CPU time is the processes' own (user + system, every thread).

    .venv/bin/python bench/inprocess.py examples/resnet examples/resnet/samples/sample.jpg --layouts 2x1x1,1x2x1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THREADS_ENV = "MASERVE_INTRA_OP_THREADS"  # maserve.onnx's sessions read it


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> "Layout":
        processes, threads, batch = (int(part) for part in text.lower().split("x"))
        return cls(processes, threads, batch)

    def __str__(self) -> str:
        return f"{self.processes}x{self.threads}x{self.batch}"


@dataclass(frozen=True)
class Measured:
    layout: Layout
    images_per_s: float
    cpu_us_per_image: float
    ms_per_batch: float  # wall time of one batch in one process: one request's latency at batch 1
    load_s: float  # load + warm-up of the model in one process (what a worker does before it is healthy)


def _pipeline(model_dir: Path) -> tuple[Any, Any, float]:
    """The example's Model, loaded and warmed as a maserve worker does, and the seconds it took."""
    from maserve.config import load_config
    from maserve.model import load_model, serves_batches

    started = time.perf_counter()
    config = load_config(model_dir / "config.json")
    model = load_model(model_dir, config)
    model.load()
    model.warmup()
    return model, serves_batches(model), time.perf_counter() - started


def _inputs(image: Path) -> Any:
    from maserve.model import Inputs, UploadedFile

    return Inputs(files={"images": UploadedFile(image.name, "image/png", image.read_bytes())})


def _worker(model_dir: str, image: str, layout: Layout, seconds: float, start: Any, out: Any) -> None:
    os.environ[THREADS_ENV] = str(layout.threads)
    model, batches, load_s = _pipeline(Path(model_dir))
    inputs = _inputs(Path(image))

    def one_batch() -> None:
        if batches:
            model.predict_batch([model.prepare(inputs) for _ in range(layout.batch)])
        else:
            for _ in range(layout.batch):
                model.predict(inputs)

    one_batch()
    start.wait()
    cpu0, t0, runs = time.process_time(), time.perf_counter(), 0
    for _ in range(10_000_000):  # bounded; ends on time
        one_batch()
        runs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and runs >= 3:
            break
    out.put((runs * layout.batch, elapsed, time.process_time() - cpu0, load_s))


def measure(model_dir: Path, image: Path, layout: Layout, seconds: float) -> Measured:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(layout.processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(model_dir), str(image), layout, seconds, start, out))
             for _ in range(layout.processes)]
    for proc in procs:
        proc.start()
    try:
        results = []
        deadline = time.monotonic() + seconds + 300
        while len(results) < len(procs) and time.monotonic() < deadline:
            try:
                results.append(out.get(timeout=1.0))
            except queue.Empty:
                if all(not proc.is_alive() for proc in procs) and out.empty():
                    break
        if len(results) < len(procs):
            raise RuntimeError(f"in-process layout {layout}: {len(procs) - len(results)} process(es) gave no result "
                               f"(exit codes {[proc.exitcode for proc in procs]})")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    images = sum(n for n, _, _, _ in results)
    return Measured(
        layout,
        images_per_s=sum(n / t for n, t, _, _ in results),
        cpu_us_per_image=sum(cpu for _, _, cpu, _ in results) / images * 1e6,
        ms_per_batch=1000 * sum(t / (n / layout.batch) for n, t, _, _ in results) / len(results),
        load_s=max(load for _, _, _, load in results),
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("--layouts", default="1x1x1,2x1x1,1x2x1", help="PROCESSESxTHREADSxBATCH, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    print("| processes x threads x batch | images/s | CPU us/image | ms/batch | load s |\n|---|---:|---:|---:|---:|")
    for text in args.layouts.split(","):
        m = measure(args.model_dir.resolve(), args.image.resolve(), Layout.parse(text), args.seconds)
        print(f"| {m.layout} | {m.images_per_s:.1f} | {m.cpu_us_per_image:.0f} | {m.ms_per_batch:.1f} | {m.load_s:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
