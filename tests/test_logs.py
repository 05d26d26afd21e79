"""maserve.logs: an access line formatted directly (IterationLog's usual path) is the line a
LogRecord through the same formatter gives, in both formats; any other set-up goes through logging."""

from __future__ import annotations

import io
import logging

import pytest

from maserve.logs import IterationLog, JsonFormatter, TextFormatter, TickStreamHandler, _direct_handler

VALUES = {"request_id": "r-1", "method": "POST", "path": "/", "status": 200, "latency_ms": 1.5, "bytes": 19,
          "label": "猫"}


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, logging.ERROR])
@pytest.mark.parametrize("created", [1764806400.0, 1764806400.9996, 1764806401.123456])
def test_a_direct_line_is_the_records_line(formatter: logging.Formatter, level: int, created: float) -> None:
    record = logging.LogRecord("maserve.access", level, "", 0, "request failed", None, None)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    record.fields = dict(VALUES)
    assert formatter.line(created, level, "maserve.access", "request failed", dict(VALUES)) == formatter.format(record)


def _logger(name: str, *handlers: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = list(handlers)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_iteration_lines_are_written_directly_in_one_write_or_through_logging_otherwise() -> None:
    stream = io.StringIO()
    handler = TickStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = _logger("maserve.test-direct", handler)
    assert _direct_handler(logger) is not None
    lines = IterationLog(logger)
    lines._lines = [(logging.INFO, "request", {"status": 200}), (logging.DEBUG, "hidden", {}),
                    (logging.WARNING, "request failed", {"status": 400})]
    lines.flush()
    written = stream.getvalue().splitlines()
    assert [line.split('"message": ')[1] for line in written] == ['"request", "status": 200}',
                                                                    '"request failed", "status": 400}']
    # A second handler (or a logger filter) takes the ordinary path: each handler gets each record.
    other = io.StringIO()
    extra = logging.StreamHandler(other)
    logger.addHandler(extra)
    assert _direct_handler(logger) is None
    lines._lines = [(logging.INFO, "request", {"status": 201})]
    lines.flush()
    assert other.getvalue() == "request\n" and stream.getvalue().count("\n") == 3
