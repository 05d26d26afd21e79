"""A small MNIST-like ModelArts service (stdlib only) with one chosen defect, for `maserve check`.

Without --defect it follows the custom-image spec: 0.0.0.0:8080, threaded HTTP/1.1 with keep-alive
(idle connections kept 210 s), GET /health -> 200 {"health": "true"}, POST / multipart with a file in
`images` -> {"mnist_result": 7}, one stdout line per request, and on SIGTERM it keeps serving (new
connections too) for --grace seconds, then stops accepting, finishes in-flight requests, exits 0.
Each --defect breaks exactly one point of the spec (see DEFECTS) so exactly one check should FAIL.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

DEFECTS = {
    "none": "correct server",
    "health-True": 'GET /health answers {"health": "True"}: the spec wants the string "true"',
    "health-html": "GET /health answers 200 text/html, not the JSON body the spec shows",
    "localhost-only": "listens on 127.0.0.1:8080: unreachable from outside the container",
    "port-8000": "listens on 0.0.0.0:8000: ModelArts only calls 8080",
    "idle-close-5s": "closes idle keep-alive connections after 5 s: the spec asks for 200 s",
    "exit-on-sigterm": "exits at once on SIGTERM: requests during the rolling upgrade fail",
    "stop-accepting-early": "closes its listener at SIGTERM (in-flight requests still finish): no grace",
    "drop-inflight": "after the grace, closes every connection, even those with a request in flight",
    "past-90s": "after the grace and the drain, hangs and never exits: ModelArts kills it at 90 s",
    "bad-schema": 'answers {"mnist_result": "seven"}: breaks the response schema (integer 0-9)',
    "no-logs": "writes nothing to stdout: the spec wants logs on standard output",
    "metrics-garbage": "GET /metrics answers 200 with text that is not Prometheus' format: a scraper drops it",
}

IDLE_SECONDS = 210.0  # keep-alive idle timeout; the spec asks for at least 200 s
MAX_LIFETIME = 3600.0  # a safety bound: an orphaned test server never outlives an hour
DRAIN_SECONDS = 20.0  # at most this long to finish in-flight requests after the grace
HANG_SECONDS = 600.0  # past-90s: how long it "hangs" (far beyond 90 s, still bounded)
MAX_REQUESTS_PER_CONNECTION = 100_000
MAX_BODY = 12 * 1024 * 1024


class State:
    """Shared server state: options, open connections and what each is doing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.defect: str = args.defect
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.conns: dict[socket.socket, str] = {}  # socket -> "new" | "idle" | "busy"
        self.threads: list[threading.Thread] = []
        self.draining = False
        self.stop_at = time.monotonic() + MAX_LIFETIME
        self.sigterm_at: float | None = None

    def log(self, message: str) -> None:
        if self.defect == "no-logs":
            return
        with self.out_lock:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')} {message}\n")
            sys.stdout.flush()

    def set_conn(self, conn: socket.socket, status: str) -> None:
        with self.lock:
            if conn in self.conns:
                self.conns[conn] = status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "broken-mnist/1"
    state: State  # set on the class in main()

    def setup(self) -> None:
        self.timeout = 5.0 if self.state.defect == "idle-close-5s" else IDLE_SECONDS
        super().setup()

    def handle(self) -> None:
        """BaseHTTPRequestHandler.handle with a bound on requests per connection and drain hooks."""
        self.close_connection = True
        self.handle_one_request()
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            if self.close_connection:
                break
            self.state.set_conn(self.connection, "idle")
            self.handle_one_request()

    def parse_request(self) -> bool:
        self.state.set_conn(self.connection, "busy")
        return super().parse_request()

    def log_message(self, format: str, *args: object) -> None:
        self.state.log(f"{self.address_string()} {format % args}")

    def log_request(self, code: object = "-", size: object = "-") -> None:
        self.state.log(f'{self.address_string()} "{self.requestline}" {code}')

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        slow = self.state.args.slow_ms
        if slow:
            time.sleep(slow / 1000)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.state.draining:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def reply_json(self, status: int, value: object) -> None:
        self.reply(status, json.dumps(value).encode())

    def read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            for _ in range(100_000):
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(100):  # trailers, up to the empty line
                        if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
            return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/metrics":
            if self.state.defect == "metrics-garbage":
                self.reply(200, b"requests_total{oops 1\n", "text/plain")
            else:
                self.reply(200, b"# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total 3\n",
                           "text/plain; version=0.0.4")
        elif self.path.split("?")[0] != "/health":
            self.reply_json(404, {"error_code": "NOT_FOUND", "error_msg": f"no route GET {self.path}"})
        elif self.state.defect == "health-True":
            self.reply_json(200, {"health": "True"})
        elif self.state.defect == "health-html":
            self.reply(200, b"<html><body>OK</body></html>", "text/html")
        else:
            self.reply_json(200, {"health": "true"})

    def do_POST(self) -> None:
        body = self.read_body()
        if body is None:
            self.close_connection = True
            self.reply_json(413, {"error_code": "PAYLOAD_TOO_LARGE", "error_msg": "body too large"})
            return
        if self.path.split("?")[0] != "/":
            self.reply_json(404, {"error_code": "NOT_FOUND", "error_msg": f"no route POST {self.path}"})
            return
        ctype = self.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            self.reply_json(415, {"error_code": "UNSUPPORTED_MEDIA_TYPE", "error_msg": "send multipart/form-data"})
            return
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body
        )
        files = [
            part
            for part in (message.iter_parts() if message.is_multipart() else [])
            if part.get_param("name", header="content-disposition") == "images" and part.get_filename()
        ]
        if not files or not files[0].get_payload(decode=True):
            self.reply_json(400, {"error_code": "MISSING_FIELD", "error_msg": "no file in the field 'images'"})
            return
        self.reply_json(200, {"mnist_result": "seven" if self.state.defect == "bad-schema" else 7})

    def do_PUT(self) -> None:
        self.read_body()
        self.send_error(405)

    do_DELETE = do_PATCH = do_PUT


def serve_connection(state: State, conn: socket.socket, addr: tuple) -> None:
    try:
        Handler(conn, addr, state)
    except OSError:
        pass  # the client went away (or drop-inflight cut it)
    finally:
        with state.lock:
            state.conns.pop(conn, None)
        try:
            conn.close()
        except OSError:
            pass


def start_connection(state: State, conn: socket.socket, addr: tuple) -> None:
    conn.setblocking(True)
    with state.lock:
        state.conns[conn] = "new"
    thread = threading.Thread(target=serve_connection, args=(state, conn, addr), daemon=True)
    state.threads.append(thread)
    thread.start()


def has_pending_data(conn: socket.socket) -> bool:
    try:
        return bool(select.select([conn], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def close_quietly(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def drain(state: State) -> None:
    """Finish in-flight requests, close idle keep-alive connections, all within DRAIN_SECONDS."""
    state.draining = True
    deadline = time.monotonic() + DRAIN_SECONDS
    first_request_by = time.monotonic() + 1.0  # connections accepted but silent get 1 s to speak
    for _ in range(int(DRAIN_SECONDS / 0.02) + 1):
        with state.lock:
            for conn, status in list(state.conns.items()):
                silent = status == "new" and time.monotonic() >= first_request_by
                if (status == "idle" or silent) and not has_pending_data(conn):
                    close_quietly(conn)
            alive = [t for t in state.threads if t.is_alive()]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    state.log(f"drained, {len([t for t in state.threads if t.is_alive()])} connection(s) left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defect", default="none", choices=sorted(DEFECTS))
    parser.add_argument("--host", default=None, help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default 8080)")
    parser.add_argument("--grace", type=float, default=3.0, help="seconds of service after SIGTERM")
    parser.add_argument("--slow-ms", type=int, default=0, help="delay each answer this long")
    args = parser.parse_args()
    state = State(args)
    Handler.state = state

    host = args.host or ("127.0.0.1" if args.defect == "localhost-only" else "0.0.0.0")
    port = args.port or (8000 if args.defect == "port-8000" else 8080)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    listener.settimeout(0.1)

    def on_sigterm(signum: int, frame: object) -> None:
        if state.sigterm_at is not None:
            return
        state.sigterm_at = time.monotonic()
        state.log(f"received signal {signum}")
        if args.defect == "exit-on-sigterm":
            os._exit(0)
        grace = 0.0 if args.defect == "stop-accepting-early" else args.grace
        state.stop_at = min(state.stop_at, state.sigterm_at + grace)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    state.log(f"defect={args.defect} listening on {host}:{port} grace={args.grace}s slow={args.slow_ms}ms")

    for _ in range(int(MAX_LIFETIME / 0.1) * 2):  # accept loop, bounded by stop_at and the count
        if time.monotonic() >= state.stop_at:
            break
        try:
            conn, addr = listener.accept()
        except TimeoutError:
            continue
        start_connection(state, conn, addr)

    if args.defect == "drop-inflight":
        listener.close()
        with state.lock:
            for conn in list(state.conns):
                close_quietly(conn)
        state.log("stopping: dropped every connection")
        os._exit(0)

    # Connections the kernel completed before we stop accepting are served, not reset.
    listener.setblocking(False)
    for _ in range(1000):
        try:
            conn, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            break
        start_connection(state, conn, addr)
    listener.close()
    state.log("stopped accepting; draining")
    drain(state)
    if args.defect == "past-90s":
        state.log(f"drained, but hanging for {HANG_SECONDS:g} s instead of exiting")
        time.sleep(HANG_SECONDS)
    state.log("exit 0")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
