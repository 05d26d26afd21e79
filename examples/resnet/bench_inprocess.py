"""In-process throughput of examples/resnet/model.onnx, and the cost of decode + preprocess.

    python examples/resnet/bench_inprocess.py [--seconds 4] [--batches 1,2,4,8,16] [--threads 1,2] [--procs 1,2]

For each (processes, intra-op threads, batch size): every process builds its own session and
runs batches of random input back to back for --seconds after one warm-up run; images/s is the
sum over the processes, ms/image the wall time per image of one process. Then the time to decode
and preprocess samples/sample.jpg (what `prepare` does per request).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _worker(model: str, threads: int, batch: int, seconds: float, start, out) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    session.run(None, {"images": x})
    start.wait()
    t0 = time.perf_counter()
    runs = 0
    while True:
        session.run(None, {"images": x})
        runs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and runs >= 2:
            break
    out.put((runs * batch, elapsed))


def measure(
    model: str, procs: int, threads: int, batch: int, seconds: float
) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(model, threads, batch, seconds, start, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    images_per_s = sum(n / t for n, t in results)
    ms_per_image = 1000 * sum(t / n for n, t in results) / len(results)
    return images_per_s, ms_per_image


def preprocess_cost(repeats: int = 200) -> str:
    sys.path.insert(0, str(HERE))
    import service

    data = (HERE / "samples" / "sample.jpg").read_bytes()
    lines = []
    for name, payload in (
        ("sample.jpg 320x240", data),
        ("photo-like 1024x768 JPEG", _big_jpeg()),
    ):
        service.preprocess(service.open_image(payload, "x.jpg"))
        t0 = time.perf_counter()
        for _ in range(repeats):
            image = service.open_image(payload, "x.jpg")
        t1 = time.perf_counter()
        for _ in range(repeats):
            service.preprocess(service.open_image(payload, "x.jpg"))
        t2 = time.perf_counter()
        decode_ms, total_ms = 1000 * (t1 - t0) / repeats, 1000 * (t2 - t1) / repeats
        lines.append(
            f"| {name} ({len(payload)} B, decoded {image.size[0]}x{image.size[1]}) | {decode_ms:.2f} | {total_ms:.2f} |"
        )
    return "\n".join(lines)


def _big_jpeg() -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((1024, 768), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(HERE / "model.onnx"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--no-preprocess", action="store_true")
    args = parser.parse_args()
    print(
        "| processes | threads each | batch | images/s (all processes) | ms per image (one process) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for procs in map(int, args.procs.split(",")):
        for threads in map(int, args.threads.split(",")):
            for batch in map(int, args.batches.split(",")):
                ips, ms = measure(args.model, procs, threads, batch, args.seconds)
                print(
                    f"| {procs} | {threads} | {batch} | {ips:.1f} | {ms:.1f} |",
                    flush=True,
                )
    if not args.no_preprocess:
        print(
            "\n| upload | decode ms | decode + resize + crop + normalise ms |\n|---|---:|---:|"
        )
        print(preprocess_cost())
    return 0


if __name__ == "__main__":
    sys.exit(main())
