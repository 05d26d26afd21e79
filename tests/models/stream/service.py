"""Test fixture: streams `count` events, sync or async, with delays, failures and a close marker.

Over WebSocket (/ws: the same JSON requests, plus `seen`: how many messages this socket sent,
from per-connection state; `sleep`: a slow answer; /ws-file: the uploaded bytes echoed reversed).

`log`: each event logs a line as it is made (the trace-id tests).
`closed_file`: the generator writes "closed after N" there when it is stopped early (GeneratorExit
or cancellation), "finished" when it ran to its end: the tests read it to see the model stopped.
"""

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from maserve import InvalidInput, Inputs, Model


def _item(request: dict[str, Any], index: int) -> Any:
    if request.get("log"):  # in the stream thread (sync) or the request's task (async)
        logging.getLogger("stream").warning("stream event %d", index)
    if request.get("fail_at") == index:
        if index == 0:
            raise InvalidInput("fail_at 0: refused before the first event")
        raise RuntimeError(f"fail_at {index}")
    if request.get("bad_at") == index:
        return {"index": index, "value": math.nan}
    if request.get("text"):
        return f"line {index}\nsecond line"
    return {"index": index, "time": time.time()}


class StreamService(Model):
    def warmup(self) -> None:
        list(self._sync({"count": 2}))

    def websocket_session(self) -> "Session":
        return Session(self)

    def predict(self, inputs: Inputs) -> Any:
        request = inputs.fields
        if inputs.url == "/ws-file":
            return inputs.files["file"].data[::-1]
        if request.get("sleep"):
            time.sleep(request["sleep"])
        if request.get("nan"):
            return {"value": math.nan}
        if request.get("stream") is False:
            return {"events": request["count"]}
        if request.get("mode") == "async":
            return self._async(request)
        return self._sync(request)

    def _sync(self, request: dict[str, Any]) -> Iterator[Any]:
        produced = 0
        try:
            time.sleep(request.get("first_delay", 0))
            for index in range(request["count"]):
                if index:
                    time.sleep(request.get("delay", 0))
                yield _item(request, index)
                produced += 1
            _mark(request, "finished")
        except GeneratorExit:
            _mark(request, f"closed after {produced}")
            raise

    async def _async(self, request: dict[str, Any]) -> AsyncIterator[Any]:
        produced = 0
        try:
            await asyncio.sleep(request.get("first_delay", 0))
            for index in range(request["count"]):
                if index:
                    await asyncio.sleep(request.get("delay", 0))
                yield _item(request, index)
                produced += 1
            _mark(request, "finished")
        except (GeneratorExit, asyncio.CancelledError):
            _mark(request, f"closed after {produced}")
            raise


def _mark(request: dict[str, Any], text: str) -> None:
    if request.get("closed_file"):
        Path(request["closed_file"]).write_text(text)


class Session:
    """Per-socket state: the messages this socket sent so far."""

    def __init__(self, service: StreamService) -> None:
        self.service = service
        self.seen = 0

    def predict(self, inputs: Inputs) -> Any:
        self.seen += 1
        if inputs.fields.get("seen"):
            return {"seen": self.seen}
        return self.service.predict(inputs)
