"""Batching (a model that overrides predict_batch): every request still gets its own answer or error.

The fixture model is written into tmp_path: `prepare` echoes the uploaded text and can refuse it or
sleep, `predict_batch` fails a whole batch that holds a "crash" item. One worker, so that concurrent
requests share its batches. A "sleep:1" request holds the inference thread while the others queue
behind it, which is what gathers them into one batch (a fresh server's first batch always runs on
the inference thread: nothing is known of the model yet, so it is not run on the event loop).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import MNIST_DIR, FIXTURE_MODELS, Reply, Server, heldout, multipart, png_bytes, post_image, request, start_server

SERVICE = '''
import os
import threading
import time

from maserve import InvalidInput, Model


class BatchEcho(Model):
    def prepare(self, inputs):
        text = inputs.files["file"].data.decode()
        if text.startswith("refuse"):
            raise InvalidInput("refused: " + text)
        if text.startswith("sleep:"):
            time.sleep(float(text.split(":")[1]))
        return text

    def predict_batch(self, items):
        if any(item.startswith("crash") for item in items):
            raise RuntimeError("a crash item")
        thread = threading.current_thread().name
        return [{"echo": item[:40], "batch": len(items), "thread": thread} for item in items]

    def predict(self, inputs):
        return self.predict_batch([self.prepare(inputs)])[0]
'''
HOLD = "sleep:1"  # keeps the inference thread busy while the other requests queue


@pytest.fixture
def batch_dir(tmp_path: Path) -> Path:
    model_dir = tmp_path / "batch_echo"
    model_dir.mkdir()
    (model_dir / "service.py").write_text(SERVICE)
    config = json.loads((FIXTURE_MODELS / "echo" / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def _post_text(server: Server, text: str) -> Reply:
    conn = server.connect()
    try:
        body, ctype = multipart([("file", "t.txt", text.encode())])
        return request(conn, "POST", "/echo", body, {"Content-Type": ctype})
    finally:
        conn.close()


def _concurrently(server: Server, texts: list[str]) -> dict[str, Reply]:
    """POST each text on its own connection at once, after HOLD has started on the model."""
    with ThreadPoolExecutor(len(texts) + 1) as pool:
        held = pool.submit(_post_text, server, HOLD)
        time.sleep(0.3)  # let HOLD reach the inference thread first
        replies = dict(zip(texts, pool.map(lambda t: _post_text(server, t), texts)))
        assert held.result(timeout=30).status == 200
    return replies


# HOLD makes the model look slow (1 s a request): without a budget, the queued requests still share a batch.
GATHER_ALL = {"MASERVE_WORKERS": "1", "MASERVE_BATCH_BUDGET_SECONDS": "0"}


def test_queued_requests_share_a_batch_and_each_gets_its_own_answer(tmp_path: Path, batch_dir: Path) -> None:
    server = start_server(tmp_path, batch_dir, env=GATHER_ALL)
    try:
        texts = [f"item-{i}" for i in range(8)]
        replies = _concurrently(server, texts)
        for text, reply in replies.items():
            assert reply.status == 200, reply.body
            assert reply.json()["echo"] == text
        assert max(reply.json()["batch"] for reply in replies.values()) > 1
    finally:
        server.stop()


def test_a_failing_item_fails_only_its_own_request(tmp_path: Path, batch_dir: Path) -> None:
    server = start_server(tmp_path, batch_dir, env=GATHER_ALL)
    try:
        good = [f"good-{i}" for i in range(5)]
        replies = _concurrently(server, [*good, "refuse-me", "crash-me"])
        for text in good:
            assert replies[text].status == 200, replies[text].body
            assert replies[text].json()["echo"] == text
        assert replies["refuse-me"].status == 400
        assert replies["refuse-me"].json()["error_code"] == "MASERVE.INVALID_INPUT"
        assert replies["crash-me"].status == 500
        assert replies["crash-me"].json()["error_code"] == "MASERVE.MODEL_ERROR"
        assert server.wait_log(lambda r: r.get("message") == "the model raised an exception")
    finally:
        server.stop()


def test_a_batch_takes_at_most_the_size_cap(tmp_path: Path, batch_dir: Path) -> None:
    server = start_server(tmp_path, batch_dir, env={**GATHER_ALL, "MASERVE_MAX_BATCH_SIZE": "3"})
    try:
        texts = [f"item-{i}" for i in range(9)]
        replies = _concurrently(server, texts)
        assert all(reply.status == 200 and reply.json()["echo"] == text for text, reply in replies.items())
        assert max(reply.json()["batch"] for reply in replies.values()) == 3
    finally:
        server.stop()


def test_a_slow_model_gets_batches_that_fit_the_budget(tmp_path: Path, batch_dir: Path) -> None:
    """0.2 s a request and a 0.5 s budget: two at a time, however many wait (oldest first)."""
    server = start_server(tmp_path, batch_dir, env={"MASERVE_WORKERS": "1", "MASERVE_BATCH_BUDGET_SECONDS": "0.5"})
    try:
        assert _post_text(server, "sleep:0.2").json()["batch"] == 1  # measures the model
        texts = [f"sleep:0.2:{i}" for i in range(7)]
        with ThreadPoolExecutor(len(texts)) as pool:
            replies = list(pool.map(lambda t: _post_text(server, t), texts))
        assert all(reply.status == 200 for reply in replies), [r.body for r in replies]
        sizes = [reply.json()["batch"] for reply in replies]
        assert max(sizes) == 2, sizes
    finally:
        server.stop()


def test_quick_batches_run_on_the_event_loop_and_a_slow_one_sends_the_next_back_to_the_thread(
    tmp_path: Path, batch_dir: Path
) -> None:
    server = start_server(tmp_path, batch_dir, env={"MASERVE_WORKERS": "1", "MASERVE_REQUEST_TIMEOUT_SECONDS": "1"})
    try:
        first, second = _post_text(server, "one"), _post_text(server, "two")
        assert first.json()["thread"].startswith("maserve-infer")  # nothing known of the model yet
        assert second.json()["thread"] == "MainThread"  # the first batch was quick
        large = _post_text(server, "x" * 70_000)  # a large upload is never decoded on the event loop
        assert large.status == 200 and large.json()["thread"].startswith("maserve-infer")
        assert _post_text(server, "three").json()["thread"] == "MainThread"

        # Quick so far, so this slow one runs on the event loop; it is answered when it ends.
        assert _post_text(server, "sleep:1.5").status in (200, 504)
        # The next batch goes to the thread, where the timeout answers 504 while the model still runs.
        started = time.monotonic()
        reply = _post_text(server, "sleep:4")
        assert reply.status == 504 and time.monotonic() - started < 3.5
        # Once the model is quick again, batches go back to the event loop.
        threads = [_post_text(server, f"after-{i}").json()["thread"] for i in range(3)]
        assert threads[-1] == "MainThread"
    finally:
        server.stop()


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_threads_run_that_many_batches_at_once(tmp_path: Path, batch_dir: Path, threads: int) -> None:
    """MASERVE_BATCH_THREADS=2: a request that arrives while one batch holds a thread runs on the
    second thread and is answered first; with one batch thread it waits for the first batch. The
    order answered is the order of the access lines (one worker writes them as it answers)."""
    server = start_server(tmp_path, batch_dir, env={"MASERVE_WORKERS": "1", "MASERVE_BATCH_THREADS": str(threads)})

    def post(text: str, request_id: str) -> Reply:
        conn = server.connect()
        try:
            body, ctype = multipart([("file", "t.txt", text.encode())])
            return request(conn, "POST", "/echo", body, {"Content-Type": ctype, "X-Request-Id": request_id})
        finally:
            conn.close()

    try:
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(post, "sleep:1.5", "held")
            time.sleep(0.3)  # the held batch is running
            other = post("other", "other")
            assert other.status == 200 and other.json()["batch"] == 1
            assert held.result(timeout=30).status == 200
        lines = server.wait_log(lambda r: r.get("request_id") in ("held", "other"))
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            lines = [r for r in server.log_records() if r.get("request_id") in ("held", "other")]
        order = [r["request_id"] for r in lines]
        assert order == (["held", "other"] if threads == 1 else ["other", "held"]), order
        if threads == 2:
            assert other.json()["thread"] != held.result().json()["thread"]
    finally:
        server.stop()


def test_a_batch_past_the_timeout_answers_504_and_the_next_request_is_served(tmp_path: Path, batch_dir: Path) -> None:
    server = start_server(tmp_path, batch_dir, env={"MASERVE_WORKERS": "1", "MASERVE_REQUEST_TIMEOUT_SECONDS": "1"})
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(_post_text, server, "sleep:3")
            time.sleep(0.5)  # the slow batch is running; "queued" has 0.5 s left when that batch is stuck
            queued = pool.submit(_post_text, server, "queued")  # waits behind the slow batch
            reply = slow.result(timeout=30)
            assert reply.status == 504
            assert reply.json()["error_code"] == "MASERVE.INFERENCE_TIMEOUT"
            # The slow batch outlived the timeout: the queued request went to the other thread.
            assert queued.result(timeout=30).status == 200
        reply = _post_text(server, "next")
        assert reply.status == 200
        assert reply.json()["echo"] == "next"
    finally:
        server.stop()


@pytest.mark.skipif(not (MNIST_DIR / "model.onnx").exists(), reason="examples/mnist/model.onnx missing")
def test_concurrent_mnist_requests_get_the_answers_of_single_requests(mnist_server: Server) -> None:
    images, _ = heldout(48)
    uploads = [png_bytes(image) for image in images] + [png_bytes(np.zeros((28, 28), np.uint8)), b"not an image"]

    def ask(data: bytes) -> tuple[int, bytes]:
        conn = mnist_server.connect()
        try:
            reply = post_image(conn, data)
            return reply.status, reply.body
        finally:
            conn.close()

    alone = [ask(data) for data in uploads]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, uploads * 3))
    assert together == alone * 3
    assert [status for status, _ in alone[-2:]] == [400, 400]


def test_gray_inks_are_bitwise_the_inks_of_single_images() -> None:
    """The MNIST service preprocesses same-size grayscale uploads of a batch together: same values."""
    sys.path.insert(0, str(MNIST_DIR))
    import preprocess

    digits, _ = heldout(40)
    images = [Image.fromarray(d) for d in digits]
    images += [Image.fromarray(255 - d) for d in digits[:10]]  # dark ink on light paper
    images += [Image.fromarray(d).resize((56, 56)) for d in digits[:10]]  # a second size
    images += [Image.new("L", (28, 28), 0), Image.new("L", (1, 1), 9), Image.new("RGB", (28, 28)), Image.new("L", (400, 20))]
    inks = preprocess.gray_inks(images)
    assert [ink is None for ink in inks[-2:]] == [True, True]  # not plain grayscale within WORK_SIDE
    for image, ink in zip(images, inks):
        if ink is not None:
            alone = preprocess.ink_from_image(image)
            assert ink.dtype == alone.dtype and ink.shape == alone.shape and ink.tobytes() == alone.tobytes()


def test_images_to_tensors_are_bitwise_the_tensors_of_single_images() -> None:
    """The MNIST service normalises a batch's inks together: same values as one by one, and a blank
    upload fails alone."""
    sys.path.insert(0, str(MNIST_DIR))
    import preprocess

    digits, _ = heldout(40)
    images = [Image.fromarray(d) for d in digits]
    images += [Image.fromarray(255 - d).resize((90, 60)) for d in digits[:10]]  # paper, stretched: resized
    images += [Image.fromarray(d).rotate(20, expand=True) for d in digits[:10]]  # another size
    images += [Image.fromarray(d).convert("RGB") for d in digits[:5]]  # not plain grayscale
    images += [Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 200)]  # blank: no digit
    tensors = preprocess.images_to_tensors(images)
    assert len(tensors) == len(images)
    for image, tensor in zip(images[:-2], tensors):
        alone = preprocess.image_to_tensor(image)
        assert isinstance(tensor, np.ndarray) and tensor.tobytes() == alone.tobytes()
    assert all(isinstance(tensor, preprocess.NoDigitError) for tensor in tensors[-2:])
