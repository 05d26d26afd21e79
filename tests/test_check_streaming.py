"""`maserve check`'s stream and websocket rows: on the stream fixture served by maserve (PASS, the
held socket closed with 1001 at the stop), and on a stdlib server that buffers its stream (FAIL)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import FIXTURE_MODELS, free_port
from test_check import run_check

STREAM_DIR = FIXTURE_MODELS / "stream"


def rows(out) -> dict[str, dict]:
    return {r["check"]: r for r in json.loads(out.stdout)["results"]}


def test_stream_and_websocket_rows_pass_on_maserve():
    port = free_port()
    env = {"MASERVE_MODEL_DIR": str(STREAM_DIR), "MASERVE_GRACE_SECONDS": "3", "MASERVE_DRAIN_SECONDS": "5",
           "MASERVE_PORT": str(port), "MASERVE_WORKERS": "2"}
    out = run_check("--cmd", "sh image/run.sh", "--port", str(port), "--grace", "3", "--keepalive-seconds", "1",
                    "--config", str(STREAM_DIR), "--json", env=env, timeout=180)
    found = rows(out)
    assert list(found) == ["config", "port", "health", "apis", "stream", "websocket", "logs", "metrics", "keepalive", "shutdown"]
    assert all(r["verdict"] == "PASS" for r in found.values()), out.stdout
    assert "3 events" in found["stream"]["evidence"]
    assert "closed with 1001" in found["websocket"]["evidence"]
    assert out.returncode == 0


class _BufferingHandler(BaseHTTPRequestHandler):
    """Answers the stream api with every event in one write, ending in an error event."""

    def do_GET(self):  # the health probe
        body = b'{"health": "true"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"".join(b'data: {"index": %d}\n\n' % i for i in range(3))
        body += b'event: error\ndata: {"error_code": "X", "error_msg": "broken"}\n\n'
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_buffered_stream_that_ends_in_an_error_fails_the_stream_row():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BufferingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        out = run_check(f"http://127.0.0.1:{port}", "--port", port, "--config", str(STREAM_DIR),
                        "--keepalive-seconds", "0.5", "--json", timeout=120)
    finally:
        server.shutdown()
    found = rows(out)
    assert found["stream"]["verdict"] == "FAIL"
    assert "all 4 events arrived in one read" in found["stream"]["evidence"]
    assert 'ended with an error event {"error_code": "X"' in found["stream"]["evidence"]
    assert found["websocket"]["verdict"] == "FAIL"  # it speaks no WebSocket
    assert out.returncode != 0
