"""The reference MNIST service over real HTTP: what the spec's curl example promises."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from helpers import MNIST_DIR, Server, assert_matches_response_schema, heldout, multipart, post_image, request

pytestmark = pytest.mark.skipif(not (MNIST_DIR / "model.onnx").exists(), reason="examples/mnist/model.onnx missing")
SAMPLES = MNIST_DIR / "samples"


def test_spec_curl_example_reads_a_photo_of_a_seven(mnist_server: Server) -> None:
    """`curl -X POST http://HOST:8080/ -F images=@seven.jpg` prints {"mnist_result": 7}."""
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"http://127.0.0.1:{mnist_server.port}/", "-F", f"images=@{SAMPLES / 'seven.jpg'}"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert json.loads(out.stdout) == {"mnist_result": 7}


def test_every_sample_is_read_right(mnist_server: Server) -> None:
    expected = json.loads((SAMPLES / "expected.json").read_text())
    conn = mnist_server.connect()  # one keep-alive connection for all of them
    try:
        for name, answer in expected.items():  # file → the full expected JSON answer
            reply = post_image(conn, (SAMPLES / name).read_bytes(), filename=name)
            assert reply.status == 200, (name, reply.body)
            assert reply.headers["content-type"] == "application/json"
            assert reply.json() == answer, name
            assert_matches_response_schema(MNIST_DIR / "config.json", "/", reply.body)
    finally:
        conn.close()


def _canvas_drawing(digit: np.ndarray) -> bytes:
    """A browser-canvas style PNG: black strokes on a fully transparent 280x280 canvas."""
    big = Image.fromarray(digit).resize((280, 280), Image.Resampling.BICUBIC)
    rgba = Image.new("RGBA", big.size, (0, 0, 0, 0))
    rgba.putalpha(big)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    return buffer.getvalue()


def _phone_photo(digit: np.ndarray) -> bytes:
    """Dark ink on off-white paper, off-centre in a larger picture, JPEG-compressed."""
    rng = np.random.default_rng(1)
    paper = np.full((480, 640), 225, dtype=np.float32) + rng.normal(0, 6, (480, 640))
    ink = np.asarray(Image.fromarray(digit).resize((200, 200), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    paper[60:260, 330:530] -= ink * 180
    buffer = io.BytesIO()
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@pytest.mark.parametrize("render", [_canvas_drawing, _phone_photo])
def test_real_world_uploads(mnist_server: Server, render) -> None:
    images, labels = heldout(60)
    conn = mnist_server.connect()
    right = 0
    try:
        for digit, label in zip(images, labels):
            reply = post_image(conn, render(digit), filename="upload")
            assert reply.status == 200, reply.body
            right += reply.json()["mnist_result"] == int(label)
    finally:
        conn.close()
    assert right / len(labels) >= 0.9


def test_request_id_is_echoed_and_logged(mnist_server: Server) -> None:
    conn = mnist_server.connect()
    try:
        data = (SAMPLES / "seven.jpg").read_bytes()
        body, ctype = multipart([("images", "seven.jpg", data)])
        reply = request(conn, "POST", "/", body, {"Content-Type": ctype, "X-Request-Id": "trace-42"})
        assert reply.headers["x-request-id"] == "trace-42"
        generated = request(conn, "GET", "/health").headers["x-request-id"]
        assert len(generated) >= 16 and generated != "trace-42"
    finally:
        conn.close()
    (record,) = mnist_server.wait_log(lambda r: r.get("request_id") == "trace-42")
    assert record["method"] == "POST" and record["path"] == "/" and record["status"] == 200
    assert record["bytes"] == len(b'{"mnist_result": 7}')
    assert isinstance(record["latency_ms"], float)


def test_health_is_exactly_the_spec_reply(mnist_server: Server) -> None:
    reply = mnist_server.get("/health")
    assert reply.status == 200
    assert reply.body == b'{"health": "true"}'
    assert reply.headers["content-type"] == "application/json"
