"""Helpers for the `maserve batch` tests: the real command as a subprocess, and readers of what it
wrote (with plain json, not maserve's own code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from helpers import MASERVE_BIN, ROOT

BATCH_FILES = ROOT / "tests" / "models" / "batch_files"
BATCH_FORM = ROOT / "tests" / "models" / "batch_form"
TABULAR = ROOT / "examples" / "tabular"


def run_batch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MASERVE_BIN), "batch", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


def manifests(dest: Path) -> list[Path]:
    return sorted(dest.glob("infer-result-*.manifest"))


def manifest_lines(dest: Path) -> list[dict[str, Any]]:
    """Every line of every manifest in `dest`; each must be a whole JSON object."""
    records = []
    for path in manifests(dest):
        text = path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), f"{path} ends in a torn line"
        records += [json.loads(line) for line in text.splitlines()]
    return records


def by_source(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        assert record["source"] not in out, f"two lines for {record['source']}"
        out[record["source"]] = record
    return out


def leftovers(dest: Path) -> list[Path]:
    """Temporary files a run must never leave behind."""
    return [p for p in dest.rglob("*") if p.name.endswith(".tmp")]
