"""examples/resnet, the compute-bound workload: its model built as its README says, served for real.

model.onnx is not in the repository (102 MB): the module fixture builds it with build_model.py
(onnx.helper, seeded weights, ~2 s) into a copy of the example, which one 2-worker server serves.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from helpers import ROOT, Reply, Server, assert_matches_response_schema, post_image, start_server

pytest.importorskip("onnx", reason="examples/resnet/build_model.py needs onnx (the test extra has it)")

EXAMPLE = ROOT / "examples" / "resnet"


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("resnet") / "resnet"
    shutil.copytree(EXAMPLE, model_dir, ignore=shutil.ignore_patterns("model.onnx", "__pycache__"))
    subprocess.run([sys.executable, str(model_dir / "build_model.py"), "--out", str(model_dir / "model.onnx")],
                   check=True, timeout=300, capture_output=True)
    return model_dir


@pytest.fixture(scope="module")
def resnet_server(resnet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("resnet-server"), resnet_dir)
    yield server
    server.stop()


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], 16):  # some structure, so that different images score differently
        image.paste((255 - colour[0], colour[1] // 2, x % 256), (x, 0, x + 8, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _post(server: Server, data: bytes, filename: str = "photo.jpg") -> Reply:
    conn = server.connect(timeout=60)
    try:
        return post_image(conn, data, filename)
    finally:
        conn.close()


def test_the_sample_gets_five_sorted_finite_scores_in_the_declared_schema(resnet_server: Server, resnet_dir: Path) -> None:
    reply = _post(resnet_server, (resnet_dir / "samples" / "sample.jpg").read_bytes(), "sample.jpg")
    assert reply.status == 200, reply.body
    assert_matches_response_schema(resnet_dir / "config.json", "/", reply.body)
    predictions = reply.json()["predictions"]
    scores = [p["score"] for p in predictions]
    assert len(predictions) == 5 and scores == sorted(scores, reverse=True)
    assert all(math.isfinite(s) and 0 <= s <= 1 for s in scores)
    assert len({p["label"] for p in predictions}) == 5 and all(p["label"].startswith("class_") for p in predictions)


def test_concurrent_requests_get_the_answers_they_get_alone(resnet_server: Server) -> None:
    """Requests that share batches (or not: the batch budget decides) each get their own answer."""
    images = [_jpeg((40 * i, 200 - 30 * i, 90)) for i in range(6)]
    alone = [_post(resnet_server, image).json() for image in images]
    assert len({json.dumps(a) for a in alone}) > 1  # the images are told apart
    with ThreadPoolExecutor(len(images) * 2) as pool:
        together = list(pool.map(lambda image: _post(resnet_server, image), images * 2))
    assert [r.status for r in together] == [200] * len(together)
    assert [r.json() for r in together] == alone * 2


@pytest.mark.parametrize("data, filename, code", [
    (b"not an image at all", "notes.txt", "MASERVE.INVALID_IMAGE"),
    (_jpeg((10, 20, 30))[:300], "cut.jpg", "MASERVE.INVALID_IMAGE"),
])
def test_bad_uploads_are_400s_naming_the_file(resnet_server: Server, data: bytes, filename: str, code: str) -> None:
    reply = _post(resnet_server, data, filename)
    assert reply.status == 400, reply.body
    assert reply.json()["error_code"] == code and filename in reply.json()["error_msg"]
    assert _post(resnet_server, _jpeg((1, 2, 3))).status == 200  # and the server stays up


def test_one_worker_gets_every_core_as_intra_op_threads_and_answers_alike(
    resnet_server: Server, resnet_dir: Path, tmp_path: Path
) -> None:
    """The compute-bound layout (MASERVE_WORKERS=1): onnxruntime gets the cores the workers leave."""
    cores = len(os.sched_getaffinity(0))
    image = (resnet_dir / "samples" / "sample.jpg").read_bytes()
    server = start_server(tmp_path, resnet_dir, env={"MASERVE_WORKERS": "1"})
    try:
        started = server.wait_log(lambda r: r.get("message") == "maserve started")
        assert started and started[0]["workers"] == 1 and started[0]["intra_op_threads"] == cores
        one, two = _post(server, image).json(), _post(resnet_server, image).json()
    finally:
        server.stop()
    assert [p["label"] for p in one["predictions"]] == [p["label"] for p in two["predictions"]]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(one["predictions"], two["predictions"]))
