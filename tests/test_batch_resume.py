"""A real `maserve batch` run killed with SIGKILL midway, several times, then `--resume`d: in the
end exactly one manifest line per input and every result file whole."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from batch_helpers import BATCH_FILES, by_source, leftovers, manifest_lines, manifests, run_batch
from helpers import MASERVE_BIN, ROOT, start_server

INPUTS = 300


def _lines(dest: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in manifests(dest))


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(MASERVE_BIN), "batch", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when(proc: subprocess.Popen[bytes], dest: Path, lines: int, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while _lines(dest) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_sigkill_at_any_point_then_resume(tmp_path: Path) -> None:
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    server = start_server(tmp_path, BATCH_FILES, env={"BATCH_SLEEP_SECONDS": "0.004", "BATCH_FLAKY_DIR": str(flaky)})
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    blobs = {f"{i:03d}.bin": os.urandom(64 + i) for i in range(INPUTS)}
    blobs["fail-me.bin"] = b"fails every time"
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    args = [f"http://127.0.0.1:{server.port}", "--config", str(BATCH_FILES), "--src-path", str(src),
            "--dest-path", str(dest), "--concurrency", "8", "--manifest-lines", "120"]
    try:
        # Killed before any line, after a few, and twice more later: each time resumed.
        for kill_at, resume in ((0, False), (20, True), (130, True), (250, True)):
            proc = _start(args + (["--resume"] if resume else []))
            _kill_when(proc, dest, kill_at)
            assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
            if kill_at == 20:  # a torn last line, as a crash of the machine could leave
                with open(manifests(dest)[-1], "ab") as handle:
                    handle.write(b'{"source": "/torn", "resu')
        before = {r["source"] for r in manifest_lines_tolerant(dest) if r["result"] == "SUCCESSFUL"}
        done = run_batch(*args, "--resume")
    finally:
        server.stop()
    assert done.returncode == 1, done.stderr  # fail-me.bin
    records = by_source(manifest_lines(dest))  # raises on a second line for one input
    assert set(records) == {str(src / name) for name in blobs}
    for name, data in blobs.items():
        record = records[str(src / name)]
        if name == "fail-me.bin":
            assert record["result"] == "FAILED" and "asked to fail" in record["error_message"]
            continue
        assert record["result"] == "SUCCESSFUL", record
        answer = json.loads(Path(record["inference-loc"]).read_text())
        assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert leftovers(dest) == []
    results = sorted(p.name for p in next(p for p in dest.iterdir() if p.is_dir()).iterdir())
    assert results == sorted(f"{name}_result.txt" for name in blobs if name != "fail-me.bin")
    sent = INPUTS + 1 - len(before)
    assert f"{sent} request(s)" in done.stdout, done.stdout  # what was SUCCESSFUL was not sent again
    assert len(before) > 0


def manifest_lines_tolerant(dest: Path) -> list[dict]:
    """Lines as a killed run left them (a torn last line skipped)."""
    out = []
    for path in manifests(dest):
        for line in path.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
