"""The platform's output layout under `--dest-path`, written so that nothing is ever half there:

    infer-result-<task_id>/<input name>_result.txt    the service's answer (a CSV: one JSON line per row)
    infer-result-<task_id>.manifest                   one JSON line per input, in completion order

A result file is written to a hidden temporary name and renamed into place; its manifest line is
appended (one write() of the whole line) only after the rename, so a run killed at any moment
leaves whole result files and whole lines (at worst a result without its line, redone on resume).
A manifest past `lines_per_manifest` lines is split: then the parts are `..._1.manifest`,
`..._2.manifest`, ... from the first (the number of lines is known before the run starts). With
`--shard K/N` the manifest is `infer-result-<task_id>-shard-K-of-N.manifest`, so shards can share
one destination (and, with one --task-id, one results folder).

`--resume` keeps the SUCCESSFUL lines whose result file exists, drops the rest (FAILED lines, a
torn last line) by rewriting the manifest atomically, and removes leftover temporary files; the
inputs of the kept lines are not sent again.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maserve.batch.inputs import UsageError

PREFIX = "infer-result-"
LINES_PER_MANIFEST = 100_000
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
_MANIFEST = re.compile(r"infer-result-(?P<task>[A-Za-z0-9][A-Za-z0-9.-]*?)(?P<shard>-shard-\d+-of-\d+)?"
                       r"(?:_(?P<part>\d+))?\.manifest")
SUCCESSFUL = "SUCCESSFUL"
FAILED = "FAILED"


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based, as Kubernetes' JOB_COMPLETION_INDEX
    count: int

    @property
    def suffix(self) -> str:
        return f"-shard-{self.index}-of-{self.count}"

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise UsageError(f"--shard {text}: want K/N with 0 <= K < N (K counts from 0, as JOB_COMPLETION_INDEX)")
        return cls(int(match[1]), int(match[2]))

    def take(self, items: list[Any]) -> list[Any]:
        """This shard's deterministic share: every N-th item of the job's fixed order, from the K-th."""
        return items[self.index :: self.count]


class Output:
    """Result files and manifest lines of one run (one shard), safe to use from many threads."""

    def __init__(self, dest: Path, task_id: str, shard: Shard | None, lines: int, lines_per_manifest: int) -> None:
        self.dest = dest.absolute()
        self.task_id = task_id
        self.results_dir = self.dest / f"{PREFIX}{task_id}"
        self.base = f"{PREFIX}{task_id}{shard.suffix if shard else ''}"
        self.split = lines > lines_per_manifest
        self.lines_per_manifest = lines_per_manifest
        self._lock = threading.Lock()
        self._part = 1
        self._count = 0
        self._fd: int | None = None
        self._results = str(self.results_dir)
        self._folders: set[str] = set()
        self._serial = itertools.count()  # temporary names: unique within the run (and the pid's)
        self.successful_lines = 0  # written by this run
        self.failed_lines = 0

    def manifest_path(self, part: int = 1) -> Path:
        return self.dest / (f"{self.base}_{part}.manifest" if self.split else f"{self.base}.manifest")

    def manifests(self) -> list[Path]:
        return [self.manifest_path(p) for p in range(1, self._part + 1) if self.manifest_path(p).exists()]

    def result_path(self, name: str) -> str:
        return f"{self._results}{os.sep}{name}_result.txt"

    # -- writing ------------------------------------------------------------------------------
    def write_result(self, name: str, data: bytes) -> str:
        """The result file, whole or not at all (a temporary name in the same folder, then rename).
        Plain strings and os calls: this runs once per input, on the loop that sends the requests."""
        path = self.result_path(name)
        folder, _, base = path.rpartition(os.sep)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        temporary = f"{folder}{os.sep}.{base}.{next(self._serial)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        return path

    def succeeded(self, source: str, result: str) -> None:
        self._append({"source": source, "result": SUCCESSFUL, "inference-loc": result})

    def failed(self, source: str, reason: str, result: str | None = None) -> None:
        record: dict[str, Any] = {"source": source, "result": FAILED, "error_message": reason}
        if result is not None:
            record["inference-loc"] = result
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._count >= self.lines_per_manifest and self.split:
                self._close()
                self._part += 1
                self._count = 0
            if self._fd is None:
                self._fd = os.open(self.manifest_path(self._part), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._fd, line)  # one write of the whole line: never torn by a kill between lines
            self._count += 1
            if record["result"] == SUCCESSFUL:
                self.successful_lines += 1
            else:
                self.failed_lines += 1

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- resume -------------------------------------------------------------------------------
    def resume(self) -> set[str]:
        """Keep the SUCCESSFUL lines whose result exists (rewritten atomically); return their
        result paths, whose inputs are done."""
        kept: dict[str, bytes] = {}  # result path → line; a path met twice (a rewrite cut short) kept once
        old_parts = self._existing_parts()
        for path in old_parts:
            for raw in path.read_bytes().split(b"\n"):
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # a torn last line, or an empty one
                location = record.get("inference-loc") if isinstance(record, dict) else None
                if record.get("result") == SUCCESSFUL and isinstance(location, str) and Path(location).is_file():
                    kept.setdefault(location, raw + b"\n")
        lines = list(kept.values())
        written = set()
        for number in range(0, len(lines), self.lines_per_manifest):
            chunk = lines[number : number + self.lines_per_manifest]
            self._part, self._count = number // self.lines_per_manifest + 1, len(chunk)
            path = self.manifest_path(self._part)
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_bytes(b"".join(chunk))
            os.replace(temporary, path)  # each part replaced whole: a kill here leaves old or new lines
            written.add(path)
        for path in old_parts:
            if path not in written:
                path.unlink()
        if self.results_dir.is_dir():
            for stale in self.results_dir.rglob(".*.tmp"):
                stale.unlink(missing_ok=True)
        return set(kept)

    def _existing_parts(self) -> list[Path]:
        names = [f"{self.base}.manifest"] + [f"{self.base}_{n}.manifest" for n in range(1, 10_000)]
        found = []
        for name in names:
            if (self.dest / name).exists():
                found.append(self.dest / name)
            elif name != names[0] and not (self.dest / name).exists():
                break
        return found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def prepare(dest: Path, task_id: str | None, shard: Shard | None, resume: bool, lines: int,
            lines_per_manifest: int = LINES_PER_MANIFEST) -> tuple[Output, set[str]]:
    """Check the destination as the platform does (empty, unless resuming), pick the task id
    (given, the one found there on --resume, or a new one), and return the writer and the done set."""
    if task_id is not None and not TASK_ID.fullmatch(task_id):
        raise UsageError(f"--task-id {task_id}: letters, digits, '.' and '-' (at most 64, no '_')")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest-path {dest}: not a directory")
    entries = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
    mine = [name for name in entries if (m := _MANIFEST.fullmatch(name))
            and (m["shard"] or "") == (shard.suffix if shard else "")]
    if resume:
        if task_id is None:
            task_id = _found_task(dest, entries, mine)
    elif mine or (entries and shard is None):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        what = f"already holds {mine[0]}" if mine else f"is not empty ({shown})"
        raise UsageError(f"--dest-path {dest} {what}: the platform writes into an empty folder; give an empty "
                         "one, or --resume to carry on a run that stopped")
    dest.mkdir(parents=True, exist_ok=True)
    output = Output(dest, task_id or uuid.uuid4().hex[:12], shard, lines, lines_per_manifest)
    done = output.resume() if resume else set()
    return output, done


def _found_task(dest: Path, entries: list[str], mine: list[str]) -> str | None:
    tasks = {m["task"] for name in mine if (m := _MANIFEST.fullmatch(name))}
    if not tasks:
        tasks = {name[len(PREFIX):] for name in entries if name.startswith(PREFIX) and (dest / name).is_dir()}
    if len(tasks) > 1:
        raise UsageError(f"--dest-path {dest} holds the output of several tasks ({', '.join(sorted(tasks))}): "
                         "name the one to resume with --task-id")
    return next(iter(tasks), None)
