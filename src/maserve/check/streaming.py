"""The `stream` and `websocket` rows: only for a config.json that declares such apis.

stream: each sample of a `text/event-stream` api that answers with a stream must have that
Content-type, its first event before the first-chunk limit, events that arrive as they are made
(not all in one read), and a clean end (no error event, the chunked body terminated).
websocket: the upgrade, each sample's round trip (its answer's first message equals the expected
JSON), and, for a service the checker stops (--cmd, --image), an idle socket held open across the
stop: still answered during the grace period, then closed with 1001 (going away).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from maserve.check.result import FAIL, PASS, WARN, Result, one_line, progress
from maserve.check.samples import Sample, route
from maserve.check.target import Options, Target
from maserve.config import ApiSpec
from maserve.validate import EVENT_STREAM

FIRST_EVENT_LIMIT = 60.0  # the platform's request timeout: the first chunk must come before it
STREAM_LIMIT = 300.0  # the checker stops reading a sample's stream after this long


@dataclass
class StreamRead:
    events: list[tuple[str, str]] = field(default_factory=list)  # (event name, data)
    first_after: float | None = None
    reads_with_events: int = 0  # socket reads that completed at least one event
    ended_cleanly: bool = False


def check_streams(target: Target, apis: tuple[ApiSpec, ...], samples: dict[str, list[Sample]]) -> Result | None:
    streaming = [a for a in apis if a.response_content_type == EVENT_STREAM and not a.websocket]
    if not streaming:
        return None
    problems, passed = [], []
    for api in streaming:
        for sample in samples.get(route(api), []):
            progress(f"stream: {sample.label}")
            try:
                status, ctype, read = _read_stream(target, sample)
            except (OSError, http.client.HTTPException) as exc:
                problems.append(f"{sample.label}: no answer ({type(exc).__name__}: {exc})")
                continue
            if status != 200:
                problems.append(f"{sample.label}: status {status}")
            elif ctype != EVENT_STREAM:
                continue  # a plain JSON answer (e.g. "stream": false): the apis row judges it
            else:
                problems += [f"{sample.label}: {p}" for p in _judge_stream(read)]
                passed.append(f"{sample.label}: {len(read.events)} events, first after {read.first_after or 0:.2f} s")
    if problems:
        return Result("stream", FAIL, one_line("; ".join(problems)))
    if not passed:
        return Result("stream", WARN, "no sample answered with a stream (samples/expected.json): nothing checked")
    return Result("stream", PASS, one_line("text/event-stream, first event in time, events incremental, clean "
                                           "end: " + "; ".join(passed)))


def _read_stream(target: Target, sample: Sample) -> tuple[int, str, StreamRead]:
    conn = target.endpoint.connect(timeout=FIRST_EVENT_LIMIT)
    started = time.monotonic()
    try:
        conn.request(sample.method, sample.url, body=sample.body, headers=sample.headers)
        response = conn.getresponse()
        ctype = (response.getheader("content-type") or "").split(";")[0].strip().lower()
        read = StreamRead()
        if response.status != 200 or ctype != EVENT_STREAM:
            response.read()
            return response.status, ctype, read
        name, data, buffer = "message", [], ""
        while time.monotonic() - started < STREAM_LIMIT:
            chunk = response.read1(65536)
            if not chunk:
                read.ended_cleanly = True
                break
            completed = 0
            buffer += chunk.decode(errors="replace")
            *lines, buffer = buffer.split("\n")  # the last piece is an incomplete line
            for line in (raw.rstrip("\r") for raw in lines):
                if not line:
                    if data:
                        read.events.append((name, "\n".join(data)))
                        completed += 1
                        if read.first_after is None:
                            read.first_after = time.monotonic() - started
                    name, data = "message", []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line.startswith("event:"):
                    name = line[6:].strip()
            read.reads_with_events += completed > 0
        return response.status, ctype, read
    finally:
        conn.close()


def _judge_stream(read: StreamRead) -> list[str]:
    out = []
    if not read.events:
        return ["no event in the stream"]
    if read.first_after is not None and read.first_after > FIRST_EVENT_LIMIT:
        out.append(f"first event after {read.first_after:.1f} s (the platform's limit: {FIRST_EVENT_LIMIT:g} s)")
    if len(read.events) > 1 and read.reads_with_events < 2:
        out.append(f"all {len(read.events)} events arrived in one read: the stream looks buffered")
    errors = [data for name, data in read.events if name == "error"]
    if errors:
        out.append(f"ended with an error event {errors[-1][:120]}")
    if not read.ended_cleanly:
        out.append("the stream did not end")
    return out


def message(sample: Sample) -> str | bytes:
    """A sample as a WebSocket message: a .json file as text, anything else binary."""
    body = sample.body or b""
    return body.decode() if sample.name.endswith(".json") else body


class SocketHold:
    """An idle WebSocket held open across the stop: answered during the grace period, then 1001."""

    def __init__(self, url: str, sample: Sample, options: Options, ssl_context: Any) -> None:
        from websockets.sync.client import connect  # only for services with WebSocket apis

        self._socket = connect(url, ssl=ssl_context, open_timeout=10, max_size=None)
        self._sample = sample
        self._grace = options.grace
        self.answered_in_grace: bool | None = None
        self.close_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, terminated: threading.Event) -> None:
        self._terminated = terminated
        self._thread.start()

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        self._terminated.wait(timeout=600)
        time.sleep(min(1.0, self._grace / 2))
        try:
            self._socket.send(message(self._sample))
            self._socket.recv(timeout=30)
            self.answered_in_grace = True
            while True:
                self._socket.recv(timeout=self._grace + 120)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
            if self.answered_in_grace is None:
                self.answered_in_grace = False
        except TimeoutError:
            self.answered_in_grace = bool(self.answered_in_grace)

    def finish(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._socket.close()


def check_websockets(target: Target, apis: tuple[ApiSpec, ...], samples: dict[str, list[Sample]],
                     options: Options) -> tuple[Result | None, SocketHold | None]:
    """Upgrade and round trips now; and, for a service the checker stops, a socket to hold."""
    sockets = [a for a in apis if a.websocket]
    if not sockets:
        return None, None
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    from maserve.check.client import unverified_tls

    endpoint = target.endpoint
    scheme = "wss" if endpoint.https else "ws"
    context = unverified_tls() if endpoint.https else None
    problems, passed, hold = [], [], None
    for api in sockets:
        url = f"{scheme}://{endpoint.host}:{endpoint.port}{api.url}"
        group = samples.get(route(api), [])
        progress(f"websocket: {url}, {len(group)} sample(s)")
        try:
            with connect(url, ssl=context, open_timeout=10, max_size=None) as socket:
                for sample in group:
                    socket.send(message(sample))
                    answer = socket.recv(timeout=60)
                    value = json.loads(answer) if isinstance(answer, str) else answer
                    if not _as_expected(value, sample.expected):
                        problems.append(f"{sample.label}: answered {str(value)[:100]}, expected "
                                        f"{json.dumps(sample.expected)[:100]}")
                    else:
                        passed.append(sample.label)
            if group and hold is None and target.is_command:
                hold = SocketHold(url, group[0], options, context)
        except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
            problems.append(f"{url}: {type(exc).__name__}: {exc}")
    if problems:
        return Result("websocket", FAIL, one_line("; ".join(problems))), None
    if not passed:
        return Result("websocket", WARN, "upgrade accepted; no samples (samples/expected.json: "
                      '"WEBSOCKET /url"): no round trip checked'), hold
    return Result("websocket", PASS, one_line(f"upgrade and {len(passed)} round trip(s) as expected")), hold


def _as_expected(value: Any, expected: Any) -> bool:
    """The exact answer, or for `null` any answer that is not an error message."""
    if expected is None:
        return not (isinstance(value, dict) and "error_code" in value)
    return value == expected


def judge_hold(result: Result, hold: SocketHold | None) -> Result:
    """Add what the held socket saw during the stop to the websocket row."""
    if hold is None or result.verdict == FAIL:
        return result
    if not hold.answered_in_grace:
        return Result("websocket", FAIL, result.evidence + "; a held socket was not answered during the grace period")
    if hold.close_code != 1001:
        return Result("websocket", FAIL, result.evidence + f"; at the stop a held socket closed with "
                      f"{hold.close_code}, want 1001 (going away)")
    return Result(result.check, result.verdict, result.evidence + "; a held socket was answered during the grace "
                  "period, then closed with 1001")
