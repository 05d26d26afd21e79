"""Reading Server-Sent Events off a real HTTP response (http.client), with arrival times."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass
class Event:
    name: str  # "message" unless the stream named it (maserve's error event: "error")
    data: str
    arrived: float  # time.monotonic() when its blank line arrived

    def json(self) -> Any:
        return json.loads(self.data)


def open_stream(port: int, path: str, body: dict[str, Any], timeout: float = 30) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def events(response: http.client.HTTPResponse) -> Iterator[Event]:
    """Parse events as they arrive, per the SSE format (data lines joined by newlines)."""
    name, data = "message", []
    while True:
        line = response.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n").decode()
        if not line:
            if data:
                yield Event(name, "\n".join(data), time.monotonic())
            name, data = "message", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()


def stream(port: int, path: str, body: dict[str, Any], timeout: float = 30) -> tuple[http.client.HTTPResponse, list[Event]]:
    conn, response = open_stream(port, path, body, timeout)
    try:
        return response, list(events(response)) if response.status == 200 and "event-stream" in response.getheader("content-type", "") else []
    finally:
        conn.close()
