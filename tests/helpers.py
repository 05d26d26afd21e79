"""Test helpers: real servers as real processes on 127.0.0.1, real HTTP over sockets."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("MASERVE_TEST_MNIST_DIR", ROOT / "examples" / "mnist"))
FIXTURE_MODELS = Path(__file__).resolve().parent / "models"
RUN_SH = ROOT / "image" / "run.sh"
MASERVE_BIN = Path(sys.executable).parent / "maserve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(files: list[tuple[str, str, bytes]] = (), fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """Encode (field, filename, data) files and plain fields as multipart/form-data."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def post_image(conn: http.client.HTTPConnection, data: bytes, filename: str = "digit.png", path: str = "/") -> Reply:
    body, ctype = multipart([("images", filename, data)])
    return request(conn, "POST", path, body, {"Content-Type": ctype})


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def heldout(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(MNIST_DIR / "samples" / "heldout.npz")
    images, labels = data["images"], data["labels"]
    return (images[:count], labels[:count]) if count else (images, labels)


@dataclass
class Server:
    """A server started through image/run.sh (exactly as the image starts it)."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    https: bool = False
    started: float = field(default_factory=time.monotonic)

    def connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        if self.https:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str) -> Reply:
        conn = self.connect()
        try:
            return request(conn, "GET", path)
        finally:
            conn.close()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.get("/health").status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not healthy after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.logs().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return records

    def wait_log(self, predicate: Any, timeout: float = 5) -> list[dict[str, Any]]:
        """JSON log records matching `predicate`, waiting until at least one is written."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.log_records() if predicate(r)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def kill_group(self) -> None:
        """SIGKILL the whole session, even when the master is already gone (orphaned workers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def worker_pids(self) -> set[int]:
        """The master's children (the run.sh process is the master: run.sh execs maserve)."""
        return child_pids(self.proc.pid)

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """Wait (bounded) until `text` appears in the output; return the output."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if text in logs or time.monotonic() >= deadline:
                return logs
            time.sleep(0.05)


def start_server(
    tmp_path: Path,
    model_dir: Path = MNIST_DIR,
    env: dict[str, str] | None = None,
    wait: bool = True,
    https: bool = False,
    unset: tuple[str, ...] = (),
    ulimit: str | None = None,
) -> Server:
    """Start image/run.sh; `env` adds to (or overrides) the defaults, `unset` removes variables,
    `ulimit` (e.g. "-n 256") is applied by the shell first: a limit for the server, not the tests."""
    port = free_port()
    full_env = {
        **os.environ,
        "MASERVE_MODEL_DIR": str(model_dir),
        "MASERVE_HOST": "127.0.0.1",
        "MASERVE_PORT": str(port),
        "MASERVE_WORKERS": "2",
        "MASERVE_GRACE_SECONDS": "0",
        "MASERVE_BIN": str(MASERVE_BIN),
        **(env or {}),
    }
    for name in unset:
        full_env.pop(name, None)
    if "MASERVE_PORT" in unset:
        port = 8080  # the server's own default
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "ab") as log_file:  # O_APPEND: several processes write lines to it
        command = ["sh", str(RUN_SH)] if ulimit is None else ["sh", "-c", f'ulimit {ulimit} && exec sh "$0"', str(RUN_SH)]
        proc = subprocess.Popen(
            command, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, port, log_path, https=https)
    if wait:
        try:
            server.wait_healthy()
        except BaseException:
            server.stop()
            raise
    return server


# -- additions for the process-level tests (shutdown, lifecycle, TLS) ---------------------------
ECHO_DIR = FIXTURE_MODELS / "echo"


def mnist_model_present() -> bool:
    """The MNIST model and its held-out samples are trained separately and may be absent."""
    return (MNIST_DIR / "model.onnx").is_file() and (MNIST_DIR / "samples" / "heldout.npz").is_file()


def child_pids(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc (or `ps --ppid` where that file is missing)."""
    children = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children.update(int(p) for p in handle.read().split())
        return children
    except FileNotFoundError:
        pass
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True, timeout=10)
    return {int(p) for p in out.stdout.split()}


def echo_request(
    conn: http.client.HTTPConnection,
    size: int,
    sleep: float | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """POST /echo to the echo fixture with a `size`-byte file (and optionally `sleep` seconds)."""
    fields = {"sleep": f"{sleep:g}"} if sleep is not None else None
    body, ctype = multipart([("file", "blob.bin", os.urandom(size))], fields)
    return request(conn, "POST", "/echo", body, {"Content-Type": ctype, **(headers or {})})


# -- additions for the schema tests ---------------------------------------------------------------
def assert_matches_response_schema(config_path: Path, url: str, body: Any, method: str = "POST") -> None:
    """Fail unless `body` (a reply's bytes or the decoded JSON) matches the response schema that
    config_path declares for `method url`. Plain jsonschema (Draft 7) on the raw config.json, not
    maserve's own schema code, so a defect there cannot hide one in the server."""
    import jsonschema

    config = json.loads(Path(config_path).read_text())
    apis = [a for a in config.get("apis", []) if a.get("url", "/") == url and a.get("method", "post").upper() == method]
    assert len(apis) == 1, f"{config_path} declares {len(apis)} apis for {method} {url}"
    schema = (apis[0].get("response") or {}).get("data") or {}
    value = json.loads(body) if isinstance(body, (bytes, str)) else body
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    assert not errors, f"{method} {url} answered {value!r}, against its response schema: " + "; ".join(
        f"{e.message} (at {'/'.join(map(str, e.absolute_path)) or 'root'})" for e in errors
    )
