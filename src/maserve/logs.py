"""Logging to standard output (the only place ModelArts shows): JSON lines or readable text.

Everything logs through the `logging` module, including gunicorn's and uvicorn's own loggers, so
one formatter shapes every line. Structured values travel in `extra={"fields": {...}}`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import logging.config
import re
import time
from typing import Any, Callable

# The attribute that carries a record's structured values (passed via `extra`).
_FIELDS = "fields"

def _line_encoder() -> Callable[[Any], str]:
    """json.dumps(value, default=str) for a log line, without json's per-call setup: the C encoder
    that JSONEncoder.encode builds on every call, built once (a fifth of a request's log cost).
    Log values are plain data, so there is no circular-reference check."""
    c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_encoder is None:  # an interpreter without json's C accelerator
        return json.JSONEncoder(default=str).encode
    iterencode = c_encoder(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda value: "".join(iterencode(value, 0))


_ENCODE = _line_encoder()
# The server's one-line-per-request log, written in batches (IterationLog, ACCESS_FLUSH_SECONDS).
ACCESS_LOGGER = "maserve.access"
# How long the access lines wait to be written together (maserve.logs.IterationLog): long enough to
# gather a lone client's many requests into one write, short for anyone reading the log.
ACCESS_FLUSH_SECONDS = 0.05
# TickStreamHandler writes at once past this many waiting lines (bounds memory and the wait).
_MAX_WAITING_LINES = 256


_last_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    return _timestamp_at(record.created, int(record.msecs))


def _timestamp_at(created: float, msecs: int | None = None) -> str:
    """ISO 8601 UTC with milliseconds (from `created` unless given, as a LogRecord's msecs); the
    formatted second is reused (strftime is costly per line)."""
    global _last_second
    second = int(created)
    if msecs is None:
        msecs = int((created - second) * 1000)
    if second != _last_second[0]:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{msecs:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS, None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODE(entry)

    @staticmethod
    def line(created: float, level: int, logger: str, message: str, values: dict[str, Any]) -> str:
        """What `format` makes of a record with these values and no exception, without the record."""
        entry: dict[str, Any] = {
            "time": _timestamp_at(created),
            "level": logging.getLevelName(level),
            "logger": logger,
            "message": message,
        }
        entry.update(values)
        return _ENCODE(entry)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record.created, record.levelno, record.name, record.getMessage(),
                         getattr(record, _FIELDS, None) or {}, int(record.msecs))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    @staticmethod
    def line(created: float, level: int, logger: str, message: str, values: dict[str, Any],
             msecs: int | None = None) -> str:
        """What `format` makes of a record with these values and no exception, without the record."""
        line = f"{_timestamp_at(created, msecs)} {logging.getLevelName(level):<7} {logger}: {message}"
        extra = " ".join(f"{k}={v}" for k, v in values.items())
        return f"{line} {extra}" if extra else line


class TickStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes the access lines of one event-loop iteration with one write.

    A worker logs a line per request, and in the image stdout is unbuffered (PYTHONUNBUFFERED), so
    one write per line is a system call per request. Access lines logged on an event loop wait in
    memory until the next iteration; any other line is written at once, after the waiting ones, so
    the order holds. A worker stops by re-raising SIGTERM (uvicorn), with no atexit: the app calls
    `flush` at lifespan shutdown, after the last request, so no line is lost.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            loop: asyncio.AbstractEventLoop | None = None
            if record.name == ACCESS_LOGGER:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass
            self._waiting.append(line)
            if loop is None or len(self._waiting) >= _MAX_WAITING_LINES:
                self.flush()
            elif len(self._waiting) == 1:
                loop.call_soon(self.flush)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write the waiting lines, then flush the stream (from any thread: it takes the lock)."""
        self.write_lines([])

    def write_lines(self, lines: list[str]) -> None:
        """Write the waiting lines and then `lines` (whole, each ending in a newline) with one write."""
        with self.lock:  # type: ignore[union-attr]  # an RLock: emit already holds it
            if self._waiting or lines:
                self._waiting.extend(lines)
                text = "".join(self._waiting)
                self._waiting.clear()
                self.stream.write(text)
            super().flush()


class IterationLog:
    """A logger's lines, logged together ACCESS_FLUSH_SECONDS after the first of them.

    For the access log: a line per request, each a full LogRecord through the usual handlers, but
    made in one tight loop instead of one at a time between requests, which costs a twentieth of
    a small model's request (bench/RESULTS.md). Written at the end of each event-loop iteration,
    a request alone on its worker paid a write of its own: 50 ms gather the lines of a few
    hundred requests at 1 to 8 connections into one write (-8% CPU a request there). Call
    `flush` before the loop stops.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lines: list[tuple[int, str, dict[str, Any]]] = []

    def log(self, level: int, message: str, values: dict[str, Any]) -> None:
        """Log `message` with `values` as its fields within ACCESS_FLUSH_SECONDS."""
        if not self._lines:  # flushed in a context of its own, not the first logging request's (its trace id)
            asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, self.flush, context=contextvars.Context())
        self._lines.append((level, message, values))

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        direct = _direct_handler(self._logger)
        if direct is None:
            for level, message, values in lines:
                self._logger.log(level, message, extra={_FIELDS: values})
            return
        # The usual set-up: the lines formatted straight into the one handler's write, the same
        # text as a LogRecord each would give, at a quarter of its cost (17 vs 5 us a line here).
        handler, line = direct
        logger, name, now = self._logger, self._logger.name, time.time()
        handler.write_lines([line(now, level, name, message, values) + handler.terminator
                             for level, message, values in lines
                             if level >= handler.level and logger.isEnabledFor(level)])


def _direct_handler(logger: logging.Logger) -> tuple[TickStreamHandler, Callable[..., str]] | None:
    """The handler and its formatter's `line` when `logger`'s records reach exactly one handler,
    a TickStreamHandler with maserve's formatter, through loggers without filters of their own:
    its filters (trace context, socket noise) leave an access line as it is, so formatting one
    directly gives what logging would write. Else None: records go through logging as usual."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    if len(found) != 1 or type(found[0]) is not TickStreamHandler:
        return None
    formatter = found[0].formatter
    if type(formatter) not in (JsonFormatter, TextFormatter):
        return None
    return found[0], formatter.line  # type: ignore[union-attr]


# The caller's W3C trace id during a request (maserve.app sets it from `traceparent`): the model's
# own log lines then carry it too, so that logs join the caller's traces.
TRACE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("maserve_trace_id", default=None)
# The trace ids of the traced requests in the batch a model's `predict_batch` is running (a batch
# serves several callers: its lines carry `trace_ids`, each request's `prepare` its own `trace_id`).
BATCH_TRACE_IDS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("maserve_batch_trace_ids",
                                                                                  default=())
# version-traceid-parentid-flags; version ff is invalid, as are all-zero ids (W3C Trace Context).
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def trace_id_of(traceparent: bytes) -> str | None:
    """The trace id of a valid `traceparent` header, else None (an invalid one is ignored, as the
    W3C recommendation says: the request is served as if it came without one)."""
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest) or trace == b"0" * 32 or parent == b"0" * 16:
        return None
    return trace.decode()


class _TraceContext(logging.Filter):
    """Adds the request's trace id to a record made while it is handled (in its task or thread),
    or the trace ids of the batch being predicted."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace = TRACE_ID.get()
        if trace is not None:
            values = getattr(record, _FIELDS, None) or {}
            if "trace_id" not in values:
                setattr(record, _FIELDS, {**values, "trace_id": trace})
        elif traces := BATCH_TRACE_IDS.get():
            values = getattr(record, _FIELDS, None) or {}
            if "trace_ids" not in values:
                setattr(record, _FIELDS, {**values, "trace_ids": list(traces)})
        return True


class _DropSocketCloseNoise(logging.Filter):
    """gunicorn's worker re-closes sockets uvicorn already closed at shutdown: EBADF, harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Error while closing socket")


def logging_config(log_format: str) -> dict[str, Any]:
    """A dictConfig for the process: also handed to gunicorn as `logconfig_dict`."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler = {
        "class": f"{__name__}.TickStreamHandler",
        "stream": "ext://sys.stdout",
        "formatter": "maserve",
        "filters": ["socket_close_noise", "trace_context"],
    }

    def logger(level: str) -> dict[str, Any]:
        return {"level": level, "handlers": ["stdout"], "propagate": False}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"maserve": {"()": f"{__name__}.{formatter.__name__}"}},
        "filters": {"socket_close_noise": {"()": f"{__name__}._DropSocketCloseNoise"},
                    "trace_context": {"()": f"{__name__}._TraceContext"}},
        # gunicorn's defaults name these two handlers; pointing both at stdout keeps stderr empty.
        "handlers": {"stdout": handler, "console": handler, "error_console": handler},
        "loggers": {
            "maserve": logger("INFO"),
            "gunicorn.error": logger("INFO"),
            "gunicorn.access": logger("WARNING"),
            "uvicorn.error": logger("INFO"),
            "uvicorn.access": logger("WARNING"),
        },
        "root": {"level": "WARNING", "handlers": ["stdout"]},
    }


def setup_logging(log_format: str) -> None:
    # The logging HOWTO's "Optimization" settings: no caller frame, thread or process lookups per
    # record. One line per request makes these a measurable share of a small model's request.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False
    logging.config.dictConfig(logging_config(log_format))


def flush_handlers(logger: logging.Logger) -> None:
    """Flush every handler a record of `logger` reaches: its own, then its ancestors' while it propagates."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            handler.flush()
        current = current.parent if current.propagate else None


def fields(**values: Any) -> dict[str, Any]:
    """`logger.info(msg, extra=fields(a=1))`: attach structured values to a line."""
    return {_FIELDS: values}
