"""`maserve batch --image` on the `--batch` MNIST image, run by podman or docker: the platform's
batch flow end to end (start the container, wait for health, send every file, SIGTERM, exit
status), as CI's image stage runs it (image/ci-image.sh sets MASERVE_TEST_BATCH_IMAGE while the
batch image exists). Skipped, saying why, where that image or a working engine is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from batch_helpers import by_source, leftovers, manifest_lines, run_batch
from helpers import MNIST_DIR

from maserve.check.image import default_engine, engine_works

IMAGE = os.environ.get("MASERVE_TEST_BATCH_IMAGE", "maserve-mnist:batch-check")


@pytest.fixture(scope="module")
def engine() -> str:
    name = os.environ.get("MASERVE_TEST_ENGINE") or default_engine()
    if not engine_works(name):
        pytest.skip(f"no container engine works here (`{name} info` failed)")
    exists = [name, "image", "exists" if name == "podman" else "inspect", IMAGE]
    if subprocess.run(exists, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"{IMAGE} is not built (CI's image stage builds it and runs this test)")
    return name


def test_batch_job_on_the_batch_image(engine: str, tmp_path: Path) -> None:
    expected = json.loads((MNIST_DIR / "samples" / "expected.json").read_text())
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in expected:
        shutil.copy(MNIST_DIR / "samples" / name, src / name)
    (src / "notes.txt").write_text("not a digit")
    done = run_batch("--image", IMAGE, "--engine", engine, "--env", "MASERVE_GRACE_SECONDS=2",
                     "--config", str(MNIST_DIR), "--src-path", str(src), "--dest-path", str(dest), timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr  # notes.txt
    assert "service exited with status 0" in done.stderr, done.stderr
    records = by_source(manifest_lines(dest))
    assert set(records) == {str(p) for p in src.iterdir()}
    for name, answer in expected.items():
        record = records[str(src / name)]
        assert record["result"] == "SUCCESSFUL", record
        assert json.loads(Path(record["inference-loc"]).read_text()) == answer
    assert records[str(src / "notes.txt")]["result"] == "FAILED"
    assert "not an image" in records[str(src / "notes.txt")]["error_message"]
    assert leftovers(dest) == []
    names = subprocess.run([engine, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                           check=False).stdout
    assert "maserve-check-" not in names, "the batch run left its container behind"
