"""Bad input gets a clear JSON error with the right status, and the server answers the next request."""

from __future__ import annotations

import io
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURE_MODELS, MNIST_DIR, Reply, Server, multipart, png_bytes, post_image, request, start_server

pytestmark = pytest.mark.skipif(not (MNIST_DIR / "model.onnx").exists(), reason="examples/mnist/model.onnx missing")


def _digit_png() -> bytes:
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[5:23, 12:16] = 255
    return png_bytes(digit)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    data = bytearray(png_bytes(np.zeros((1, 1), dtype=np.uint8)))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _assert_error(reply: Reply, status: int, code: str) -> dict:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error_code", "error_msg"}
    assert body["error_code"] == code
    assert body["error_msg"]
    return body


def _assert_still_serving(server: Server) -> None:
    conn = server.connect()
    try:
        reply = post_image(conn, _digit_png())
        assert reply.status == 200, reply.body
        assert set(reply.json()) == {"mnist_result"}
    finally:
        conn.close()


def _post(server: Server, body: bytes, content_type: str, path: str = "/", method: str = "POST") -> Reply:
    conn = server.connect()
    try:
        return request(conn, method, path, body, {"Content-Type": content_type})
    finally:
        conn.close()


def _post_files(server: Server, files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> Reply:
    body, ctype = multipart(files, fields)
    return _post(server, body, ctype)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="JPEG")
    return buffer.getvalue()




def test_missing_images_part(mnist_server: Server) -> None:
    body = _assert_error(_post_files(mnist_server, [], {"note": "hello"}), 400, "MASERVE.MISSING_FIELD")
    assert "images" in body["error_msg"]
    _assert_still_serving(mnist_server)


def test_empty_file(mnist_server: Server) -> None:
    _assert_error(_post_files(mnist_server, [("images", "empty.png", b"")]), 400, "MASERVE.EMPTY_FILE")
    _assert_still_serving(mnist_server)


def test_not_an_image(mnist_server: Server) -> None:
    body = _assert_error(
        _post_files(mnist_server, [("images", "notes.txt", b"just some text, not pixels")]), 400, "MASERVE.INVALID_IMAGE"
    )
    assert "notes.txt" in body["error_msg"]
    _assert_still_serving(mnist_server)


def test_truncated_image(mnist_server: Server) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    _assert_error(_post_files(mnist_server, [("images", "cut.png", data[: len(data) // 2])]), 400, "MASERVE.INVALID_IMAGE")
    _assert_still_serving(mnist_server)


def test_unsupported_format(mnist_server: Server) -> None:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PPM")
    body = _assert_error(_post_files(mnist_server, [("images", "d.ppm", buffer.getvalue())]), 400, "MASERVE.INVALID_IMAGE")
    assert "supported format" in body["error_msg"]
    _assert_still_serving(mnist_server)


def test_more_than_one_file(mnist_server: Server) -> None:
    files = [("images", "a.png", _digit_png()), ("images", "b.png", _digit_png())]
    _assert_error(_post_files(mnist_server, files), 400, "MASERVE.TOO_MANY_FILES")
    _assert_still_serving(mnist_server)


def test_undeclared_file_field(mnist_server: Server) -> None:
    files = [("images", "a.png", _digit_png()), ("extra", "b.png", _digit_png())]
    body = _assert_error(_post_files(mnist_server, files), 400, "MASERVE.UNEXPECTED_FIELD")
    assert "extra" in body["error_msg"]


@pytest.mark.parametrize("side", [9_000, 20_000, 60_000])
def test_decompression_bomb_refused_from_header(mnist_server: Server, side: int) -> None:
    body = _assert_error(_post_files(mnist_server, [("images", "bomb.png", _bomb_png(side, side))]), 400, "MASERVE.IMAGE_TOO_LARGE")
    assert "pixels" in body["error_msg"]
    _assert_still_serving(mnist_server)


def test_blank_image(mnist_server: Server) -> None:
    _assert_error(_post_files(mnist_server, [("images", "white.jpg", _jpeg())]), 400, "MASERVE.NO_DIGIT")


def test_body_over_limit_with_content_length_is_refused_before_it_is_sent(mnist_server: Server) -> None:
    """The server answers 413 from the header alone: the client has sent 1 KiB of a declared 100 MiB."""
    declared = 100 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", mnist_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
            + b"x" * 1024
        )
        reply = b""
        for _ in range(100):  # until the server closes the connection
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert b"MASERVE.PAYLOAD_TOO_LARGE" in reply
    _assert_still_serving(mnist_server)


def test_chunked_body_over_limit(mnist_server: Server) -> None:
    def chunks():
        for _ in range(64):  # 4 MiB in all, the limit is 1 MiB
            yield b"x" * 65536

    conn = mnist_server.connect()
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Type", "multipart/form-data; boundary=b")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        status = None
        try:
            for chunk in chunks():
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close the connection once it has answered 413
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 413
    _assert_still_serving(mnist_server)


def test_wrong_content_type(mnist_server: Server) -> None:
    body = _assert_error(_post(mnist_server, b'{"images": 1}', "application/json"), 415, "MASERVE.UNSUPPORTED_MEDIA_TYPE")
    assert "multipart/form-data" in body["error_msg"]
    _assert_still_serving(mnist_server)


def test_missing_content_type(mnist_server: Server) -> None:
    conn = mnist_server.connect()
    try:
        reply = request(conn, "POST", "/", b"abc")
    finally:
        conn.close()
    _assert_error(reply, 415, "MASERVE.UNSUPPORTED_MEDIA_TYPE")


def test_wrong_method(mnist_server: Server) -> None:
    reply = mnist_server.get("/")
    _assert_error(reply, 405, "MASERVE.METHOD_NOT_ALLOWED")
    assert reply.headers["allow"] == "POST"
    _assert_error(_post(mnist_server, b"", "text/plain", path="/health"), 405, "MASERVE.METHOD_NOT_ALLOWED")
    _assert_still_serving(mnist_server)


def test_unknown_path(mnist_server: Server) -> None:
    body = _assert_error(mnist_server.get("/predict"), 404, "MASERVE.NOT_FOUND")
    assert "POST /" in body["error_msg"]
    _assert_still_serving(mnist_server)


@pytest.mark.parametrize(
    "body",
    [
        b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\nabc",  # never closed
        b"this is not multipart at all",
        b"--b\r\nContent-Type: image/png\r\n\r\nabc\r\n--b--\r\n",  # part without a name
        b"--b\r\nNo-Colon-Header\r\n\r\nabc\r\n--b--\r\n",
    ],
)
def test_malformed_multipart(mnist_server: Server, body: bytes) -> None:
    _assert_error(_post(mnist_server, body, "multipart/form-data; boundary=b"), 400, "MASERVE.MALFORMED_REQUEST")
    _assert_still_serving(mnist_server)


def test_multipart_without_boundary(mnist_server: Server) -> None:
    _assert_error(_post(mnist_server, b"abc", "multipart/form-data"), 400, "MASERVE.MALFORMED_REQUEST")


def test_error_replies_are_logged_with_their_reason(mnist_server: Server) -> None:
    conn = mnist_server.connect()
    try:
        request(conn, "GET", "/nowhere", headers={"X-Request-Id": "err-log-check"})
    finally:
        conn.close()
    records = mnist_server.wait_log(lambda r: r.get("request_id") == "err-log-check")
    assert len(records) == 1
    assert records[0]["status"] == 404
    assert records[0]["error_code"] == "MASERVE.NOT_FOUND"
    assert "/nowhere" in records[0]["error_msg"]


def test_slow_inference_answers_504_and_the_next_request_is_served(tmp_path) -> None:
    server = start_server(tmp_path, FIXTURE_MODELS / "echo", env={"MASERVE_REQUEST_TIMEOUT_SECONDS": "1"})
    try:
        conn = server.connect()
        body, ctype = multipart([("file", "f.bin", b"abc")], {"sleep": "3"})
        reply = request(conn, "POST", "/echo", body, {"Content-Type": ctype})
        _assert_error(reply, 504, "MASERVE.INFERENCE_TIMEOUT")
        body, ctype = multipart([("file", "f.bin", b"abcd")])
        reply = request(conn, "POST", "/echo", body, {"Content-Type": ctype})
        assert reply.status == 200
        assert reply.json()["size"] == 4
        conn.close()
    finally:
        server.stop()
