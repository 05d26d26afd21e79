"""`maserve batch` against real services on 127.0.0.1: file jobs (MNIST uploads, manifests),
the output layout, retries, several URLs, shards and refusals. CSV jobs are in test_batch_csv.py,
SIGKILL + --resume in test_batch_resume.py."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from batch_helpers import BATCH_FILES, by_source, leftovers, manifest_lines, manifests, run_batch
from helpers import MASERVE_BIN, MNIST_DIR, ROOT, Server, mnist_model_present, start_server

SAMPLES = MNIST_DIR / "samples"


@pytest.fixture(scope="module")
def files_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    flaky = tmp_path_factory.mktemp("flaky")
    server = start_server(tmp_path_factory.mktemp("files"), BATCH_FILES, env={"BATCH_FLAKY_DIR": str(flaky)})
    yield server
    server.stop()


def _url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not mnist_model_present(), reason="examples/mnist/model.onnx is trained separately")
def test_a_folder_of_mnist_uploads_with_bad_files(mnist_server: Server, tmp_path: Path) -> None:
    """Every file gets one line; digits SUCCESSFUL with the service's answer in <name>_result.txt;
    a text file and an empty file FAILED with the service's error_msg; an oversized file and a
    dangling link FAILED client-side, with nothing sent for them; exit 1."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    expected = json.loads((SAMPLES / "expected.json").read_text())
    for name in expected:
        shutil.copy(SAMPLES / name, src / name)
    (src / "notes.txt").write_text("not an image")
    (src / "empty.png").write_bytes(b"")
    (src / "huge.png").write_bytes(b"\0" * (12 * 1024 * 1024 + 1))
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    done = run_batch(_url(mnist_server), "--config", str(MNIST_DIR), "--src-path", str(src), "--dest-path", str(dest))
    assert done.returncode == 1, done.stderr
    records = by_source(manifest_lines(dest))
    assert set(records) == {str(p) for p in src.iterdir()}
    results = [d for d in dest.iterdir() if d.is_dir()]
    assert len(results) == 1 and results[0].name.startswith("infer-result-")
    task = results[0].name.removeprefix("infer-result-")
    assert [p.name for p in manifests(dest)] == [f"infer-result-{task}.manifest"]
    for name, answer in expected.items():
        record = records[str(src / name)]
        assert record["result"] == "SUCCESSFUL", record
        assert record["inference-loc"] == str(results[0] / f"{name}_result.txt")
        assert json.loads(Path(record["inference-loc"]).read_text()) == answer
    failed = {Path(s).name: r for s, r in records.items() if r["result"] == "FAILED"}
    assert set(failed) == {"notes.txt", "empty.png", "huge.png", "gone.png"}
    assert "is not an image" in failed["notes.txt"]["error_message"]
    assert "empty" in failed["empty.png"]["error_message"]
    assert "12 MB limit" in failed["huge.png"]["error_message"]
    assert "no such file" in failed["gone.png"]["error_message"]
    assert all("inference-loc" not in r for r in failed.values())
    assert sorted(p.name for p in results[0].iterdir()) == sorted(f"{n}_result.txt" for n in expected)
    assert "huge.png" not in mnist_server.logs()  # never sent
    assert f"{len(expected)} input(s) SUCCESSFUL, 4 FAILED" in done.stdout
    assert "maserve batch" in done.stderr and "file/s" in done.stderr  # the progress bar


def test_retries_a_503_then_succeeds_and_a_400_fails_alone(files_server: Server, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    data = {"flaky-1.bin": b"a" * 100, "fail-1.bin": b"b", "sub/ok.bin": b"c" * 7,
            # around the client's first read of an input (64 KB): each must arrive whole
            **{f"size-{n}.bin": bytes(range(256)) * (n // 256) + b"x" * (n % 256) for n in (65535, 65536, 65537, 300001)}}
    for name, content in data.items():
        (src / name).write_bytes(content)
    done = run_batch(_url(files_server), "--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(dest))
    assert done.returncode == 1, done.stderr
    records = by_source(manifest_lines(dest))
    flaky = records[str(src / "flaky-1.bin")]
    assert flaky["result"] == "SUCCESSFUL"
    assert json.loads(Path(flaky["inference-loc"]).read_text())["sha256"] == _sha(data["flaky-1.bin"])
    assert records[str(src / "fail-1.bin")] == {"source": str(src / "fail-1.bin"), "result": "FAILED",
                                                "error_message": "fail-1.bin asked to fail"}
    for name in (name for name in data if name.startswith("size-")):
        answer = json.loads(Path(records[str(src / name)]["inference-loc"]).read_text())
        assert answer["sha256"] == _sha(data[name]), name
    nested = records[str(src / "sub/ok.bin")]
    assert nested["inference-loc"].endswith("/sub/ok.bin_result.txt")  # the folder's layout is kept
    assert "1 retried" in done.stdout


def test_a_manifest_of_paths_file_and_http_urls_and_buckets(files_server: Server, tmp_path: Path) -> None:
    """Relative paths (to the manifest), file:// and http:// sources, a missing one (FAILED), two
    sources with one name (two result files), obs:// through --source-root."""
    files = tmp_path / "files"
    (files / "bucket" / "deep").mkdir(parents=True)
    blobs = {"a.bin": b"aaa", "b.bin": b"bbbb", "bucket/deep/a.bin": b"other a"}
    for name, content in blobs.items():
        (files / name).write_bytes(content)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(files), **k)  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        sources = ["files/a.bin", f"file://{files / 'b.bin'}", f"http://127.0.0.1:{web.server_port}/b.bin",
                   "files/missing.bin", "obs://bucket/deep/a.bin"]
        manifest = tmp_path / "job.manifest"
        manifest.write_text("".join(json.dumps({"source": s}) + "\n" for s in sources))
        common = ["--config", str(BATCH_FILES), "--src-path", str(manifest)]
        refused = run_batch(_url(files_server), *common, "--dest-path", str(tmp_path / "refused"))
        assert refused.returncode == 2
        assert "--source-root" in refused.stderr and "obs://bucket/deep/a.bin" in refused.stderr
        assert not (tmp_path / "refused").exists()
        dest = tmp_path / "out"
        done = run_batch(_url(files_server), *common, "--dest-path", str(dest), "--source-root", str(files))
    finally:
        web.shutdown()
    assert done.returncode == 1, done.stderr
    records = by_source(manifest_lines(dest))
    assert list(records) != [] and set(records) == set(sources)
    expected = {"files/a.bin": b"aaa", sources[1]: b"bbbb", sources[2]: b"bbbb", sources[4]: b"other a"}
    for source, content in expected.items():
        assert records[source]["result"] == "SUCCESSFUL", records[source]
        assert json.loads(Path(records[source]["inference-loc"]).read_text())["sha256"] == _sha(content)
    assert records["files/missing.bin"]["result"] == "FAILED"
    assert "no such file" in records["files/missing.bin"]["error_message"]
    locations = [r["inference-loc"] for r in records.values() if r["result"] == "SUCCESSFUL"]
    assert len(set(locations)) == 4  # a.bin and b.bin twice each: four distinct result files
    assert leftovers(dest) == []


def test_several_urls_share_the_run_and_the_manifest_splits(files_server: Server, tmp_path: Path) -> None:
    other = start_server(tmp_path, BATCH_FILES, env={"MASERVE_WORKERS": "1"})
    try:
        src, dest = tmp_path / "in", tmp_path / "out"
        src.mkdir()
        for i in range(25):
            (src / f"{i:02d}.bin").write_bytes(str(i).encode())
        done = run_batch(_url(files_server), _url(other), "--config", str(BATCH_FILES), "--src-path", str(src),
                         "--dest-path", str(dest), "--manifest-lines", "10", "--concurrency", "4")
        assert done.returncode == 0, done.stderr
        pids = {json.loads(p.read_text())["pid"] for p in dest.glob("*/*_result.txt")}
        assert set(other.worker_pids()) & pids, "the second URL got no request"
    finally:
        other.stop()
    parts = manifests(dest)
    assert [p.name.rsplit("_", 1)[1] for p in parts] == ["1.manifest", "2.manifest", "3.manifest"]
    assert [len(p.read_text().splitlines()) for p in parts] == [10, 10, 5]
    assert {r["source"] for r in manifest_lines(dest)} == {str(p) for p in src.iterdir()}


def test_shards_cover_every_input_exactly_once(files_server: Server, tmp_path: Path) -> None:
    """Three shards into one destination with one --task-id: one results folder, one manifest per
    shard, every input in exactly one of them; a shard run twice is refused."""
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(31):
        (src / f"{i:02d}.bin").write_bytes(b"x" * (i + 1))
    common = ["--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(dest), "--task-id", "job-7"]
    for k in range(3):
        done = run_batch(_url(files_server), *common, "--shard", f"{k}/3")
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in manifests(dest)) == [f"infer-result-job-7-shard-{k}-of-3.manifest" for k in range(3)]
    per_shard = [[json.loads(line)["source"] for line in p.read_text().splitlines()] for p in manifests(dest)]
    assert sorted(len(s) for s in per_shard) == [10, 10, 11]
    everything = [s for shard in per_shard for s in shard]
    assert sorted(everything) == sorted(str(p) for p in src.iterdir())
    assert sorted(p.name for p in dest.iterdir()) == ["infer-result-job-7"] + [p.name for p in manifests(dest)]
    again = run_batch(_url(files_server), *common, "--shard", "1/3")
    assert again.returncode == 2 and "already holds" in again.stderr
    assert run_batch(_url(files_server), *common, "--shard", "3/3").returncode == 2


def test_refusals_before_anything_runs(files_server: Server, tmp_path: Path) -> None:
    """An api without exactly one file field, a JSON api for file mapping, an unknown url, a
    non-empty destination: exit 2, the reason, nothing written, nothing sent."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a")
    url = _url(files_server)
    cases = {
        ("--req-uri", "/two"): "declares 2 file fields (a, b)",
        ("--req-uri", "/json"): "takes application/json",
        ("--req-uri", "/nope"): "declares no api at that url",
    }
    requests_before = files_server.logs().count('"path": "/')
    for extra, reason in cases.items():
        dest = tmp_path / f"out{len(reason)}"
        done = run_batch(url, "--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(dest), *extra)
        assert done.returncode == 2 and reason in done.stderr, (extra, done.stderr)
        assert not dest.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "someone-else.txt").write_text("x")
    done = run_batch(url, "--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(busy))
    assert done.returncode == 2 and "not empty" in done.stderr and "--resume" in done.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["someone-else.txt"]
    assert files_server.logs().count('"path": "/') == requests_before
    inside = run_batch(url, "--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(src / "out"))
    assert inside.returncode == 2 and "inside --src-path" in inside.stderr
    assert not (src / "out").exists()
    usage = run_batch("--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(tmp_path / "x"))
    assert usage.returncode == 2 and "URL" in usage.stderr


def test_a_slow_answer_fails_at_the_timeout_without_a_retry(tmp_path: Path) -> None:
    server = start_server(tmp_path, BATCH_FILES, env={"BATCH_SLEEP_SECONDS": "3", "MASERVE_WORKERS": "1"})
    try:
        src, dest = tmp_path / "in", tmp_path / "out"
        src.mkdir()
        (src / "slow.bin").write_bytes(b"s")
        done = run_batch(_url(server), "--config", str(BATCH_FILES), "--src-path", str(src), "--dest-path", str(dest),
                         "--timeout", "0.5")
    finally:
        server.stop()
    assert done.returncode == 1, done.stderr
    [record] = manifest_lines(dest)
    assert record == {"source": str(src / "slow.bin"), "result": "FAILED",
                      "error_message": "no answer within --timeout 0.5 s"}
    assert "0 retried" in done.stdout


def test_connection_errors_are_retried_across_a_service_restart(tmp_path: Path) -> None:
    """The service dies midway (SIGKILL) and comes back on the same port: the requests that met
    the dead service are retried with backoff and every input ends SUCCESSFUL."""
    env = {"BATCH_SLEEP_SECONDS": "0.02"}
    first = start_server(tmp_path, BATCH_FILES, env=env)
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(120):
        (src / f"{i:03d}.bin").write_bytes(str(i).encode())
    proc = subprocess.Popen([str(MASERVE_BIN), "batch", _url(first), "--config", str(BATCH_FILES), "--src-path",
                             str(src), "--dest-path", str(dest), "--concurrency", "4"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    second = None
    try:
        deadline = time.monotonic() + 30
        while len(manifest_lines(dest) if dest.exists() else []) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.kill_group()
        second = start_server(tmp_path, BATCH_FILES, env={**env, "MASERVE_PORT": str(first.port)}, wait=False)
        second.port = first.port
        second.wait_healthy()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        for server in (first, second):
            if server is not None:
                server.stop()
    assert proc.returncode == 0, out
    records = by_source(manifest_lines(dest))
    assert len(records) == 120 and all(r["result"] == "SUCCESSFUL" for r in records.values())
    retried = int(out.split(" retried")[0].rsplit(" ", 1)[1])
    assert retried > 0, out
