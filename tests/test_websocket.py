"""WebSocket apis, served by a real server process and driven by the `websockets` client library."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from helpers import FIXTURE_MODELS, start_server

STREAM_DIR = FIXTURE_MODELS / "stream"
MAX_MESSAGE = 1_000_000
ENV = {"MASERVE_MAX_BODY_BYTES": str(MAX_MESSAGE), "MASERVE_KEEPALIVE_SECONDS": "3",
       "MASERVE_REQUEST_TIMEOUT_SECONDS": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("ws"), STREAM_DIR, env=ENV)
    yield server
    server.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_messages_in_answers_out_with_state_per_socket(server):
    async def go():
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"count": 1, "stream": False}))
            assert json.loads(await ws.recv()) == {"events": 1}
            await ws.send(json.dumps({"count": 3}))  # an iterator answer: one message per item
            assert [json.loads(await ws.recv())["index"] for _ in range(3)] == [0, 1, 2]
            await ws.send(json.dumps({"count": 0, "seen": True}))
            assert json.loads(await ws.recv()) == {"seen": 3}
        async with websockets.connect(url) as ws:  # a new socket, new state
            await ws.send(json.dumps({"count": 0, "seen": True}))
            assert json.loads(await ws.recv()) == {"seen": 1}

    run(go())
    records = server.wait_log(lambda r: r.get("message") == "websocket" and r.get("messages_in") == 3)
    assert records and records[0]["status"] == 101 and records[0]["close_code"] == 1000


def test_a_bad_message_gets_an_error_message_and_the_socket_stays_open(server):
    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send("not json")
            assert json.loads(await ws.recv())["error_code"] == "MASERVE.MALFORMED_REQUEST"
            await ws.send(json.dumps({"count": "x"}))
            assert json.loads(await ws.recv())["error_code"] == "MASERVE.INVALID_FIELD"
            await ws.send(json.dumps({"count": 1, "nan": True}))
            error = json.loads(await ws.recv())  # strict: NaN would not parse as JSON here
            assert error["error_code"] == "MASERVE.INVALID_RESPONSE" and "NaN at $.value" in error["error_msg"]
            await ws.send(json.dumps({"count": 3, "fail_at": 1}))
            assert json.loads(await ws.recv())["index"] == 0
            assert json.loads(await ws.recv())["error_code"] == "MASERVE.MODEL_ERROR"
            await ws.send(json.dumps({"count": 1, "sleep": 3}))  # past the 2 s request timeout
            assert json.loads(await ws.recv())["error_code"] == "MASERVE.INFERENCE_TIMEOUT"
            await ws.send(json.dumps({"count": 0, "seen": True}))
            assert json.loads(await ws.recv()) == {"seen": 4}  # the two that did not decode never reached it

    run(go())


def test_large_binary_messages_both_ways_in_frames_of_at_most_64_kb(server):
    """The client sends a 300 KB file in 100 KB fragments; the answer (the bytes reversed) comes
    back in frames of at most 64 KB, as the platform's gateway splits them."""
    data = bytes(range(256)) * 1200
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{server.port}/ws-file"), max_size=None)
    sock.sendall(protocol.data_to_send()[0] if False else b"".join(_handshake(protocol)))
    frames, message = [], b""
    try:
        _read_until(sock, protocol, lambda events: any(not hasattr(e, "opcode") for e in events))
        parts = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
        protocol.send_binary(parts[0], fin=False)
        for index, part in enumerate(parts[1:], 1):
            protocol.send_continuation(part, fin=index == len(parts) - 1)
        sock.sendall(b"".join(protocol.data_to_send()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for event in _read(sock, protocol):
                if getattr(event, "opcode", None) in (Opcode.BINARY, Opcode.CONT):
                    frames.append(event)
                    message += event.data
            if frames and frames[-1].fin:
                break
    finally:
        sock.close()
    assert message == data[::-1]
    assert len(frames) == 5 and all(len(f.data) <= 64 * 1024 for f in frames)
    assert frames[0].opcode == Opcode.BINARY and all(f.opcode == Opcode.CONT for f in frames[1:])


def _handshake(protocol: ClientProtocol) -> list[bytes]:
    protocol.send_request(protocol.connect())
    return protocol.data_to_send()


def _read(sock: socket.socket, protocol: ClientProtocol) -> list:
    data = sock.recv(1 << 20)
    if not data:
        raise AssertionError("the server closed the connection")
    protocol.receive_data(data)
    return protocol.events_received()


def _read_until(sock, protocol, done) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if done(_read(sock, protocol)):
            return
    raise AssertionError("no handshake response")


def test_a_message_over_the_limit_closes_with_1009(server):
    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws-file", max_size=None) as ws:
            await ws.send(b"x" * (MAX_MESSAGE + 1))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd

    rcvd = run(go())
    assert rcvd is not None and rcvd.code == 1009


def test_ping_is_answered_and_an_idle_socket_is_closed_at_the_keepalive_limit(server):
    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", ping_interval=None) as ws:
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd, time.monotonic() - started

    rcvd, waited = run(go())
    assert rcvd.code == 1000 and rcvd.reason == "idle for 3 s (MASERVE_KEEPALIVE_SECONDS)"
    assert 2 < waited < 6


def test_a_client_that_reads_nothing_is_cut_off_at_the_send_timeout(tmp_path):
    """A client that sends messages but never reads its answers (a small receive buffer, 900 KB
    answers): once the server's buffer is full and nothing drains for MASERVE_SEND_TIMEOUT_SECONDS,
    the socket is aborted (1006 in its access line) instead of being held forever; the service
    answers others meanwhile."""
    server = start_server(tmp_path, STREAM_DIR, env={**ENV, "MASERVE_SEND_TIMEOUT_SECONDS": "2",
                                                     "MASERVE_KEEPALIVE_SECONDS": "200", "MASERVE_WORKERS": "1"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{server.port}/ws-file"), max_size=None)
        sock.sendall(b"".join(_handshake(protocol)))
        _read_until(sock, protocol, lambda events: any(not hasattr(e, "opcode") for e in events))
        sock.settimeout(0.5)
        sent_at = time.monotonic()
        for _ in range(20):  # each answer is 900 KB the client never reads
            protocol.send_binary(bytes(900_000))
            try:
                sock.sendall(b"".join(protocol.data_to_send()))
            except OSError:  # the server has cut the socket off
                break
        lines = server.wait_log(lambda r: r.get("path") == "/ws-file" and r.get("status") == 101, timeout=20)
        assert lines, server.logs()
        assert lines[0]["close_code"] == 1006
        assert 1 < lines[0]["latency_ms"] / 1000 < 15 + (time.monotonic() - sent_at)
        assert server.get("/health").status == 200
    finally:
        sock.close()
        server.stop()


def test_unknown_path_and_plain_http_get_clear_json_errors(server):
    async def go():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/nowhere"):
                pass
        return refused.value.response

    response = run(go())
    assert response.status_code == 404
    assert json.loads(response.body) == {"error_code": "MASERVE.NOT_FOUND",
                                         "error_msg": "no WebSocket api at /nowhere; WebSocket apis: /ws, /ws-file"}
    out = subprocess.run(["curl", "-s", "-i", f"http://127.0.0.1:{server.port}/ws"], capture_output=True,
                         text=True, timeout=10).stdout
    assert out.startswith("HTTP/1.1 426") and "upgrade: websocket" in out.lower()
    assert '"error_code": "MASERVE.UPGRADE_REQUIRED"' in out
    assert "without completing handshake" not in server.logs()  # a refused upgrade is not logged as a failed handshake


def test_wss_with_the_self_signed_certificate(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(STREAM_DIR, model)
    config = json.loads((model / "config.json").read_text())
    for api in config["apis"]:
        api["protocol"] = {"http": "https", "ws": "wss"}[api["protocol"]]
    (model / "config.json").write_text(json.dumps(config))
    server = start_server(tmp_path, model, https=True)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def go():
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/ws", ssl=context) as ws:
            await ws.send(json.dumps({"count": 2}))
            return [json.loads(await ws.recv())["index"] for _ in range(2)]

    try:
        assert run(go()) == [0, 1]
    finally:
        server.stop()


def test_sigterm_sockets_work_through_the_grace_period_then_finish_their_message_and_close_1001(tmp_path):
    server = start_server(tmp_path, STREAM_DIR, env={"MASERVE_GRACE_SECONDS": "2", "MASERVE_DRAIN_SECONDS": "6",
                                                     "MASERVE_WORKERS": "1"})
    url = f"ws://127.0.0.1:{server.port}/ws"

    async def go():
        idle = await websockets.connect(url)
        busy = await websockets.connect(url)
        stuck = await websockets.connect(url)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        await asyncio.sleep(1)
        await idle.send(json.dumps({"count": 0, "seen": True}))  # grace period: still served
        assert json.loads(await idle.recv()) == {"seen": 1}
        late = await websockets.connect(url)  # and new sockets accepted
        await late.close()
        await busy.send(json.dumps({"count": 1, "stream": False, "sleep": 2.5}))  # answered at ~3.5 s
        await stuck.send(json.dumps({"count": 1, "stream": False, "sleep": 30}))  # past the drain window
        outcomes = {}
        for name, ws in (("idle", idle), ("busy", busy), ("stuck", stuck)):
            received = []
            try:
                while True:
                    received.append(json.loads(await ws.recv()))
            except websockets.ConnectionClosed as closed:
                outcomes[name] = (closed.rcvd.code if closed.rcvd else None, received, time.monotonic() - signalled)
        return outcomes

    try:
        outcomes = run(go())
        assert server.proc.wait(timeout=20) == 0
    finally:
        server.stop()
    code, received, when = outcomes["idle"]
    assert code == 1001 and received == [] and 1.8 < when < 3.5  # closed as the drain began
    code, received, when = outcomes["busy"]
    assert code == 1001 and received == [{"events": 1}] and 3 < when < 5  # its message finished first
    code, received, when = outcomes["stuck"]
    assert code == 1001 and received == [] and 6 < when < 8.5  # the end of the drain window (2 + 6 - 1 s)


def test_the_mnist_example_over_websocket_png_frames_in_digits_out(tmp_path):
    """A live drawing or camera feed: PNG frames sent one after another on one socket."""
    from helpers import MNIST_DIR, heldout, mnist_model_present, png_bytes

    if not mnist_model_present():
        pytest.skip("examples/mnist/model.onnx is trained separately")
    images, labels = heldout(50)
    server = start_server(tmp_path, MNIST_DIR)

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            answers = []
            for image in images:
                await ws.send(png_bytes(image))
                answers.append(json.loads(await ws.recv())["mnist_result"])
            await ws.send(b"not a png")
            error = json.loads(await ws.recv())
            return answers, error

    try:
        answers, error = run(go())
    finally:
        server.stop()
    correct = sum(int(a == b) for a, b in zip(answers, labels))
    assert correct >= 45, f"{correct}/50 digits right over WebSocket"
    assert error["error_code"] == "MASERVE.INVALID_IMAGE"
