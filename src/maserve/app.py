"""The ASGI application: routes from config.json, /health, and the one place errors become replies.

A bare ASGI callable rather than a framework: inference on a small model takes tens of
microseconds, so per-request framework work is most of the cost (see bench/RESULTS.md).
Decoding and the model run in a worker thread so a slow request never blocks the event loop,
and so that MASERVE_REQUEST_TIMEOUT_SECONDS can answer 504 while the model is still busy; only
a batching model's quick batches of small uploads run on the loop itself (INLINE_BATCH_SECONDS).
Request and response schemas are compiled once per api here, at construction, never per request.
"""

from __future__ import annotations

import asyncio
import functools
import math
import json
import logging
import os
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from maserve.config import ApiSpec, ModelConfig, load_config
from maserve.decode import check_content_type, decode
from maserve.errors import (
    InferenceTimeout,
    MethodNotAllowed,
    ModelError,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    ServiceError,
)
from maserve.logs import ACCESS_LOGGER, IterationLog, fields, flush_handlers
from maserve.model import Model, load_model, serves_batches
from maserve.openapi import OPENAPI_URL, openapi_document
from maserve.readiness import StartupGate, StopFlag
from maserve.schema import RequestSchema, ResponseSchema
from maserve.settings import Settings

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger("maserve.app")

# Threads per worker process for decode + inference. Workers already fill the cores; a second
# thread lets a request that timed out (504) keep running without stalling the next one.
INFERENCE_THREADS = 2
# Most requests one `predict_batch` call takes (a batching model); more wait for the next batch.
MAX_BATCH = 64
# A batch runs on the event loop itself, without the hand-off to the inference thread, while the
# model is quick: its previous batch took less than this, and each upload in the batch is small.
# The hand-off costs two thread wake-ups per batch, and on a busy machine each can wait for a
# core; inline, a small model's p99 drops by a sixth (bench/RESULTS.md). A slow batch sends the
# next ones back to the thread, where the 504 timeout applies while the model is still busy.
INLINE_BATCH_SECONDS = 0.02
INLINE_MAX_BODY_BYTES = 64 * 1024
# gunicorn's exit code for "worker failed to boot": the master then stops the whole server.
WORKER_BOOT_ERROR = 3
# An incoming X-Request-Id is echoed and logged only if it is short, visible ASCII (no log injection).
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
_HEALTHY = b'{"health": "true"}'
_UNHEALTHY = b'{"health": "false"}'
_JSON_HEADER = (b"content-type", b"application/json")
_CLOSE_HEADER = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class Route:
    """One api with its schemas compiled."""

    api: ApiSpec
    request: RequestSchema
    response: ResponseSchema | None  # None unless responses are validated


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass(slots=True)
class _Job:
    """A request waiting for its batch; `future` gets its encoded answer or its error."""

    route: Route
    body: bytes
    boundary: bytes | None
    future: asyncio.Future[bytes]


@dataclass(slots=True)
class _Batch:
    """Requests handed to an inference thread together; `stuck` once it outlives the request timeout."""

    jobs: list[_Job]
    watchdog: asyncio.TimerHandle | None = None
    stuck: bool = False


class MaserveApp:
    """Serves one model directory as described by its config.json."""

    def __init__(self, settings: Settings, config: ModelConfig, model_factory: Callable[[], Model]) -> None:
        self.settings = settings
        self.config = config
        self._model_factory = model_factory
        self._model: Model | None = None
        self._ready = asyncio.Event()  # this worker's model is loaded and warmed up
        self._gate = StartupGate(settings.workers)  # ... and every worker's, at start
        self.stopping = StopFlag()  # set by the master on SIGTERM/SIGINT
        self._executor: ThreadPoolExecutor | None = None
        self._routes: dict[str, dict[str, Route]] = {}
        self._request_id_prefix = uuid.uuid4().hex[:16].encode()
        self._request_count = 0
        self._access_log = IterationLog(access_log)  # a line per request, logged once per loop iteration
        self._batching = False  # the model serves batches (set once it is loaded)
        self._pending: list[_Job] = []  # requests for the next batch
        self._busy_batches = 0  # batches in a thread, not yet stuck
        self._last_batch_seconds = math.inf  # how long the model took for the last batch (none yet)
        for api in config.apis:
            # MASERVE_VALIDATE_RESPONSES=1: check every answer against the api's response schema.
            response = ResponseSchema(api) if settings.validate_responses else None
            self._routes.setdefault(api.url, {})[api.method] = Route(api, RequestSchema(api), response)
        # GET /openapi.json describes the apis, unless config.json claims that path for itself.
        declared = OPENAPI_URL in self._routes or OPENAPI_URL == config.health_url
        self._openapi_url: str | None = None if declared else OPENAPI_URL
        self._openapi = b"" if declared else json.dumps(openapi_document(config)).encode()

    # -- ASGI entry ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._executor = ThreadPoolExecutor(INFERENCE_THREADS, thread_name_prefix="maserve-infer")
                self._request_id_prefix = uuid.uuid4().hex[:16].encode()  # after fork: one per worker
                self._load_task = asyncio.create_task(self._load())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._executor is not None:
                    self._executor.shutdown(wait=False, cancel_futures=True)
                self._access_log.flush()
                flush_handlers(access_log)  # access lines wait for the loop's next iteration
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _load(self) -> None:
        """Load and warm the model off the event loop; /health answers 503 until this ends."""
        started = time.perf_counter()
        try:
            model = await asyncio.get_running_loop().run_in_executor(self._executor, self._build_model)
        except BaseException:
            log.exception("model failed to load: stopping this server", extra=fields(pid=os.getpid()))
            sys.stdout.flush()
            os._exit(WORKER_BOOT_ERROR)
        self._model = model
        self._batching = serves_batches(model)
        self._ready.set()
        self._gate.worker_loaded()
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        log.info("model loaded and warmed up", extra=fields(pid=os.getpid(), load_ms=elapsed))

    def _build_model(self) -> Model:
        model = self._model_factory()
        model.load()
        model.warmup()
        return model

    # -- HTTP ---------------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = b""
        content_type = b""
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else None
            elif name == b"x-request-id":
                request_id = value
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = self._new_request_id()
        method: str = scope["method"]
        path: str = scope["path"]
        error: ServiceError | None = None
        headers = [_JSON_HEADER, (b"x-request-id", request_id)]
        try:
            if path == self.config.health_url and method in ("GET", "HEAD") and path not in self._routes:
                healthy = self._ready.is_set() and self._gate.all_loaded()
                status, body = (200, _HEALTHY) if healthy else (503, _UNHEALTHY)
            elif path == self._openapi_url and method in ("GET", "HEAD"):
                status, body = 200, self._openapi
            else:
                route = self._route(path, method)
                body = await self._answer(route, receive, content_type, content_length)
                status = 200
        except ServiceError as exc:
            error = exc
            status, body = exc.status, exc.body()
            if isinstance(exc, MethodNotAllowed):
                headers.append((b"allow", ", ".join(exc.allowed).encode()))
            if isinstance(exc, PayloadTooLarge) and not self.stopping.is_set():
                headers.append(_CLOSE_HEADER)  # the rest of the body is not worth reading
        except _ClientGone:
            self._log(request_id, method, path, 499, started, 0, None)
            return
        except Exception:
            log.exception("unexpected error", extra=fields(request_id=request_id.decode()))
            error = ServiceError("internal server error")
            status, body = error.status, error.body()
        if self.stopping.is_set():
            headers.append(_CLOSE_HEADER)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        self._log(request_id, method, path, status, started, len(body), error)

    def _new_request_id(self) -> bytes:
        """A unique id without a syscall per request: a random per-process prefix and a counter."""
        self._request_count += 1
        return b"%s-%08x" % (self._request_id_prefix, self._request_count)

    def _route(self, path: str, method: str) -> Route:
        by_method = self._routes.get(path)
        if by_method is None:
            if path == self.config.health_url or path == self._openapi_url:
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET", ["GET", "HEAD"])
            raise NotFound(f"no API at {path}; this service answers: {', '.join(self._describe_routes())}")
        route = by_method.get(method)
        if route is None:
            allowed = sorted(by_method)
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {' or '.join(allowed)}", allowed)
        return route

    def _describe_routes(self) -> list[str]:
        routes = [f"{m} {url}" for url, by_method in self._routes.items() for m in by_method]
        routes.append(f"GET {self.config.health_url}")
        if self._openapi_url is not None:
            routes.append(f"GET {self._openapi_url}")
        return routes

    async def _answer(self, route: Route, receive: Receive, content_type: bytes, content_length: int | None) -> bytes:
        boundary = check_content_type(route.api, content_type)
        limit = self.settings.max_body_bytes
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(f"request body of {content_length} bytes exceeds the limit of {limit} bytes")
        body = await _read_body(receive, limit)
        timeout = self.settings.request_timeout_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout  # covers waiting for the model to load, then the inference
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                raise ModelNotReady("the model is still loading; retry shortly") from None
        try:
            async with asyncio.timeout_at(deadline):
                if self._batching:
                    return await self._enqueue(loop, _Job(route, body, boundary, loop.create_future()))
                return await loop.run_in_executor(self._executor, self._predict, route, body, boundary)
        except TimeoutError:
            raise InferenceTimeout(f"inference did not finish within {timeout:g} s") from None

    def _predict(self, route: Route, body: bytes, boundary: bytes | None) -> bytes:
        """Runs in a worker thread: decode, run the model, encode its answer (and check it, if asked)."""
        inputs = decode(route.api, body, boundary, route.request)
        assert self._model is not None
        return _encode(route, _call_model(self._model.predict, inputs))

    # -- batching (a model that overrides predict_batch) -----------------------------------------
    def _enqueue(self, loop: asyncio.AbstractEventLoop, job: _Job) -> asyncio.Future[bytes]:
        """Queue a request for the next batch. Unless a thread is busy with one, the batch starts at
        the end of this loop iteration, with every request the iteration read."""
        self._pending.append(job)
        if len(self._pending) == 1 and self._busy_batches == 0:
            loop.call_soon(self._start_batch_if_idle, loop)
        return job.future

    def _start_batch_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._busy_batches == 0:
            self._start_batch(loop)

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        waiting = [job for job in self._pending if not job.future.done()]  # not yet timed out
        jobs, self._pending = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
        if not jobs:
            return
        if self._last_batch_seconds < INLINE_BATCH_SECONDS and all(len(job.body) <= INLINE_MAX_BODY_BYTES for job in jobs):
            self._run_inline(loop, jobs)
            return
        batch = _Batch(jobs)
        self._busy_batches += 1
        batch.watchdog = loop.call_later(self.settings.request_timeout_seconds, self._batch_stuck, loop, batch)
        assert self._executor is not None
        self._executor.submit(self._run_batch, loop, batch)

    def _run_inline(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """Answer a batch on the event loop (a quick model, small uploads: see INLINE_BATCH_SECONDS)."""
        started = time.perf_counter()
        outcomes = self._answer_batch(jobs)
        self._last_batch_seconds = time.perf_counter() - started
        _hand_out(jobs, outcomes)
        if self._pending:  # more than MAX_BATCH were waiting: after this iteration's replies are out
            loop.call_soon(self._start_batch_if_idle, loop)

    def _batch_stuck(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        """A batch outlived the request timeout (its requests got their 504): the requests waiting
        behind it go to the other inference thread, as a slow request never stalls the next one."""
        batch.stuck = True
        self._busy_batches -= 1
        self._last_batch_seconds = math.inf  # a slow model: the next batches stay off the event loop
        if self._pending and self._busy_batches == 0:
            self._start_batch(loop)

    def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        """Runs in a worker thread: answer a batch, then wake the event loop once for all of it."""
        started = time.perf_counter()
        outcomes = self._answer_batch(batch.jobs)
        loop.call_soon_threadsafe(self._deliver, loop, batch, outcomes, time.perf_counter() - started)

    def _answer_batch(self, jobs: list[_Job]) -> list[bytes | Exception]:
        try:
            return self._predict_batch(jobs)
        except Exception:  # a bug here must still answer every request of the batch
            log.exception("unexpected error in a batch")
            return [ServiceError("internal server error") for _ in jobs]

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, batch: _Batch, outcomes: list[bytes | Exception], seconds: float
    ) -> None:
        """On the event loop: hand each request its answer, then start the batch that gathered meanwhile."""
        if not batch.stuck:
            assert batch.watchdog is not None
            batch.watchdog.cancel()
            self._busy_batches -= 1
        self._last_batch_seconds = seconds
        _hand_out(batch.jobs, outcomes)
        if self._pending and self._busy_batches == 0:  # after this iteration's replies are out
            loop.call_soon(self._start_batch_if_idle, loop)

    def _predict_batch(self, jobs: list[_Job]) -> list[bytes | Exception]:
        """Decode and `prepare` each request alone, one `predict_batch` for all that got through,
        then encode each answer: an error anywhere fails only its own request."""
        model = self._model
        assert model is not None
        outcomes: dict[int, bytes | Exception] = {}
        prepared: dict[int, Any] = {}
        for i, job in enumerate(jobs):
            try:
                prepared[i] = _call_model(model.prepare, decode(job.route.api, job.body, job.boundary, job.route.request))
            except Exception as exc:
                outcomes[i] = exc
        for i, result in zip(prepared, _batch_results(model, list(prepared.values()))):
            try:
                outcomes[i] = result if isinstance(result, Exception) else _encode(jobs[i].route, result)
            except Exception as exc:
                outcomes[i] = exc
        return [outcomes[i] for i in range(len(jobs))]

    def _log(
        self,
        request_id: bytes,
        method: str,
        path: str,
        status: int,
        started: float,
        size: int,
        error: ServiceError | None,
    ) -> None:
        values: dict[str, Any] = {
            "request_id": request_id.decode(),
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "bytes": size,
        }
        if error is None:
            self._access_log.log(logging.INFO, "request", values)
            return
        values["error_code"] = error.error_code
        values["error_msg"] = error.message
        level = logging.ERROR if status >= 500 else logging.WARNING
        self._access_log.log(level, "request failed", values)


def _hand_out(jobs: list[_Job], outcomes: list[bytes | Exception]) -> None:
    """Each request its answer or its error (a request that timed out already has its 504)."""
    for job, outcome in zip(jobs, outcomes):
        if job.future.done():
            continue
        if isinstance(outcome, Exception):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)


def _call_model(method: Callable[[Any], Any], argument: Any) -> Any:
    """Call the model; an exception other than a ServiceError is logged and becomes a ModelError (500)."""
    try:
        return method(argument)
    except ServiceError:
        raise
    except Exception as exc:
        log.exception("the model raised an exception")
        raise ModelError(f"the model failed on this input: {type(exc).__name__}") from None


def _batch_results(model: Model, items: list[Any]) -> list[Any]:
    """`predict_batch` over `items`: one answer, or the exception to answer with, per item. When
    the batch call fails, each item runs alone, so only the item that fails gets the error."""
    if not items:
        return []
    if len(items) > 1:
        try:
            return _checked_batch(model, items)
        except Exception:
            return [answer for item in items for answer in _batch_results(model, [item])]
    try:
        return _call_model(functools.partial(_checked_batch, model), items)
    except Exception as exc:  # a ServiceError or ModelError: this item's answer
        return [exc]


def _checked_batch(model: Model, items: list[Any]) -> list[Any]:
    results = model.predict_batch(items)
    if len(results) != len(items):
        raise ValueError(f"predict_batch returned {len(results)} answers for {len(items)} items")
    return results


# Non-ASCII text as UTF-8 characters, as the platform's runtimes write it (labels in Chinese are
# common), not \uXXXX escapes; the encoder built once (json.dumps sets one up on every call).
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def _encode(route: Route, result: Any) -> bytes:
    """The model's answer as JSON bytes in UTF-8 (checked against the response schema, if asked)."""
    try:
        encoded = _to_json(result).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise ModelError(f"the model's answer is not JSON-serialisable: {exc}") from None
    if route.response is not None:
        try:
            route.response.check(json.loads(encoded))  # as sent: tuples are arrays, keys strings
        except ServiceError as exc:
            log.error("the model's answer breaks its response schema", extra=fields(error_msg=exc.message))
            raise
    return encoded


async def _read_body(receive: Receive, limit: int) -> bytes:
    """Read the body, stopping (413) as soon as it passes `limit`: an oversized body is never held whole."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def build_app(settings: Settings, config: ModelConfig) -> MaserveApp:
    """The app for a checked Settings and its model's config (the model itself loads per worker)."""
    assert settings.model_dir is not None
    model_dir = settings.model_dir.resolve()
    return MaserveApp(settings, config, functools.partial(load_model, model_dir, config))


def create_app() -> MaserveApp:
    """ASGI factory from MASERVE_* variables, for other ASGI servers or process managers, e.g.
    `gunicorn -k uvicorn_worker.UvicornWorker 'maserve.app:create_app()'` (used by bench/)."""
    settings = Settings.load()
    assert settings.model_dir is not None
    return build_app(settings, load_config(settings.model_dir / "config.json"))
