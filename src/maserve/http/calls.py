"""Calling the model for one request or one batch, and encoding what it answers.

Everything here runs where inference runs (an inference thread, or the event loop for a quick
batch) and raises only ServiceError subclasses: the model's own exceptions become ModelError (500),
logged with their traceback, so a caller always gets a JSON error naming the problem.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from maserve.config import ApiSpec
from maserve.decode import decode
from maserve.errors import ModelError, OutOfMemory, ServiceError
from maserve.jsonout import to_json
from maserve.logs import fields
from maserve.model import Model
from maserve.schema import RequestSchema, ResponseSchema
from maserve.validate import EVENT_STREAM

log = logging.getLogger("maserve.app")


@dataclass(frozen=True, slots=True)
class Route:
    """One api with its schemas compiled."""

    api: ApiSpec
    request: RequestSchema
    response: ResponseSchema | None  # None unless responses are validated

    @property
    def streams(self) -> bool:
        """The api answers Server-Sent Events (when `predict` returns an iterator)."""
        return self.api.response_content_type == EVENT_STREAM


def predict_one(model: Model, route: Route, body: bytes, boundary: bytes | None) -> bytes:
    """Decode, run the model, encode its answer (and check it, if asked)."""
    inputs = decode(route.api, body, boundary, route.request)
    return encode(route, call_model(model.predict, inputs))


def start_stream(model: Model, route: Route, body: bytes, boundary: bytes | None) -> Any:
    """For a streaming api: decode and call `predict`; an iterator it returns is left to
    maserve.sse, anything else is encoded here like any answer."""
    from maserve.sse import is_stream  # here: sse is only needed by streaming apis

    inputs = decode(route.api, body, boundary, route.request)
    result = call_model(model.predict, inputs)
    return result if is_stream(result) else encode(route, result)


def call_model(method: Callable[[Any], Any], argument: Any) -> Any:
    """Call the model; an exception other than a ServiceError is logged and becomes a ModelError (500)."""
    try:
        return method(argument)
    except ServiceError:
        raise
    except Exception as exc:
        raise model_failure(exc, "on this input", "the model raised an exception") from None


def _no_restart(reason: str) -> None:
    pass


# Set by the worker (maserve.server): it stops accepting, answers what it holds, and exits; the
# master starts a fresh one. Called from inference threads.
restart_worker: Callable[[str], None] = _no_restart


def model_failure(exc: Exception, doing: str, logged: str) -> ServiceError:
    """The error to answer a model's exception with, logged with its traceback. MemoryError is
    `500 MASERVE.OUT_OF_MEMORY` and restarts the worker: what the allocation left behind (a
    half-built tensor, a fragmented heap, a library's broken state) is not worth serving on."""
    if isinstance(exc, MemoryError):
        log.error("the model ran out of memory: this worker restarts once it has answered its other requests")
        restart_worker("the model ran out of memory")
        return OutOfMemory(f"the model ran out of memory {doing}; its worker restarts")
    log.exception(logged)
    return ModelError(f"the model failed {doing}: {type(exc).__name__}")


def batch_results(model: Model, items: list[Any]) -> list[Any]:
    """`predict_batch` over `items`: one answer, or the exception to answer with, per item. When
    the batch call fails, each item runs alone, so only the item that fails gets the error."""
    if not items:
        return []
    if len(items) > 1:
        try:
            return _checked_batch(model, items)
        except Exception:
            return [answer for item in items for answer in batch_results(model, [item])]
    try:
        return call_model(functools.partial(_checked_batch, model), items)
    except Exception as exc:  # a ServiceError or ModelError: this item's answer
        return [exc]


def _checked_batch(model: Model, items: list[Any]) -> list[Any]:
    results = model.predict_batch(items)
    if len(results) != len(items):
        raise ValueError(f"predict_batch returned {len(results)} answers for {len(items)} items")
    return results


def encode(route: Route, result: Any) -> bytes:
    """The model's answer as JSON bytes in UTF-8 (checked against the response schema, if asked)."""
    encoded = to_json(result).encode()
    if route.response is not None:
        try:
            route.response.check(json.loads(encoded))  # as sent: tuples are arrays, keys strings
        except ServiceError as exc:
            log.error("the model's answer breaks its response schema", extra=fields(error_msg=exc.message))
            raise
    return encoded
