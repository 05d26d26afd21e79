"""The job's inputs as a stream of requests, and what each answer writes.

file mapping: one Work per input; its answer's body becomes `<name>_result.txt` (SUCCESSFUL), a
              non-2xx answer or a client-side reason a FAILED line (no result file, as on the platform).
csv mapping:  one Work per row; when a CSV's last row is answered, its `<name>.csv_result.txt` is
              written with one JSON line per row in row order (the answer, or
              `{"row": N, "result": "FAILED", "error_message": ...}`), and its manifest line is
              SUCCESSFUL when every row succeeded, else FAILED naming the first failed row (and
              pointing at the result file, which has the others).

Files are read as the stream is advanced (by the sending threads, one at a time), so a job of any
size holds only the requests in flight.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from typing import Iterator

from maserve.batch.inputs import Input, InputError
from maserve.batch.mapping import FileRequests, RowError, Rule, json_request, parse_csv
from maserve.batch.output import Output
from maserve.batch.runner import Answer, Counters, Work
from maserve.config import ApiSpec


def file_work(inputs: list[Input], field: str, output: Output, counters: Counters) -> Iterator[Work]:
    requests = FileRequests(field)
    for item in inputs:
        try:
            data = item.read()
        except InputError as exc:
            output.failed(item.source, str(exc))
            counters.failed_unsent()
            continue
        body, headers = requests.build(item.name, data)
        yield Work(body, headers, partial(_file_done, output, item))


def _file_done(output: Output, item: Input, answer: Answer) -> None:
    if answer.ok:
        output.succeeded(item.source, output.write_result(item.name, answer.body))
    else:
        output.failed(item.source, answer.error)


def csv_work(inputs: list[Input], api: ApiSpec, rule: Rule, header: bool, output: Output,
             counters: Counters) -> Iterator[Work]:
    for item in inputs:
        if item.suffix != ".csv":
            output.failed(item.source, f"{item.name}: csv mapping reads only .csv files")
            counters.failed_unsent()
            continue
        try:
            rows = parse_csv(item.read(), item.name, header)
        except InputError as exc:
            output.failed(item.source, str(exc))
            counters.failed_unsent()
            continue
        with counters.lock:
            counters.total += len(rows) - 1  # the file counted as one until its rows were known
        table = CsvResult(item, len(rows), output)
        if not rows:
            table.finish()
            with counters.lock:
                counters.done += 1
            continue
        for position, (number, cells) in enumerate(rows):
            try:
                body = rule.body(cells, number)
            except RowError as exc:
                counters.failed_unsent()
                table.row_failed(position, number, str(exc))
                continue
            encoded, headers = json_request(api, body)
            yield Work(encoded, headers, partial(table.answered, position, number))


class CsvResult:
    """One CSV's rows, answered in any order, written in row order once the last one is in."""

    def __init__(self, item: Input, rows: int, output: Output) -> None:
        self.item, self.output = item, output
        self.lines: list[bytes | None] = [None] * rows
        self.left = rows
        self.first_failure: str | None = None
        self.failures = 0
        self.lock = threading.Lock()

    def answered(self, position: int, number: int, answer: Answer) -> None:
        if answer.ok:
            self._set(position, _one_line(answer.body))
        else:
            self.row_failed(position, number, answer.error)

    def row_failed(self, position: int, number: int, reason: str) -> None:
        line = json.dumps({"row": number, "result": "FAILED", "error_message": reason}, ensure_ascii=False)
        self._set(position, line.encode(), f"row {number}: {reason}")

    def _set(self, position: int, line: bytes, failure: str | None = None) -> None:
        with self.lock:
            self.lines[position] = line
            self.left -= 1
            if failure is not None:
                self.failures += 1
                self.first_failure = self.first_failure or failure
            last = self.left == 0
        if last:
            self.finish()

    def finish(self) -> None:
        path = self.output.write_result(self.item.name, b"".join(line + b"\n" for line in self.lines if line))
        if self.failures:
            reason = f"{self.failures} of {len(self.lines)} rows failed (first: {self.first_failure})"
            self.output.failed(self.item.source, reason, path)
        else:
            self.output.succeeded(self.item.source, path)


def _one_line(body: bytes) -> bytes:
    """An answer as one line of the CSV's result file (re-encoded only when it spans lines)."""
    text = body.strip()
    if b"\n" not in text and b"\r" not in text:
        return text
    try:
        return json.dumps(json.loads(text), ensure_ascii=False).encode()
    except ValueError:
        return json.dumps(text.decode("utf-8", "replace"), ensure_ascii=False).encode()
