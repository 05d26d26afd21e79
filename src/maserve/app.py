"""The ASGI application: lifespan (the model loaded per worker), routes from config.json, /health,
/openapi.json, the request timeout, the access log, and the one place errors become replies.

A bare ASGI callable rather than a framework: inference on a small model takes tens of
microseconds, so per-request framework work is most of the cost (see bench/RESULTS.md).
Decoding and the model run in a worker thread so a slow request never blocks the event loop,
and so that MASERVE_REQUEST_TIMEOUT_SECONDS can answer 504 while the model is still busy; only
a batching model's quick batches of small uploads run on the loop itself (maserve.http.batcher).
Request and response schemas are compiled once per api here, at construction, never per request.
The request/response path below the routing lives in maserve.http (calls, body, batcher, streams).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from maserve.config import ModelConfig, load_config
from maserve.decode import check_content_type
from maserve.errors import (
    InferenceTimeout,
    MethodNotAllowed,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    UpgradeRequired,
)
from maserve.http.batcher import Batcher
from maserve.http.body import BODY_TIMEOUT_STATE, ClientGone, read_body
from maserve.http.calls import Route, predict_one, start_stream
from maserve.http.streams import CLOSE_HEADER, PendingStream, open_stream, send_stream
from maserve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from maserve.metrics import Metrics
from maserve.logs import ACCESS_LOGGER, TRACE_ID, IterationLog, fields, flush_handlers, trace_id_of
from maserve.model import Model, load_model, serves_batches
from maserve.openapi import OPENAPI_URL, openapi_document
from maserve.page import build_page
from maserve.readiness import Drain, StartupGate, StopFlag
from maserve.schema import RequestSchema, ResponseSchema
from maserve.settings import Settings, SettingsError
from maserve.websocket import serve_websocket
from maserve.sse import StreamTimeout

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger("maserve.app")

# Threads per worker process for decode + inference. Workers already fill the cores; a second
# thread lets a request that timed out (504) keep running without stalling the next one.
INFERENCE_THREADS = 2
# Threads per worker for sync generators of streaming apis: one `next()` each at a time, so a
# generator that blocks between items holds one; more than inference, since streams are long.
STREAM_THREADS = 16
# gunicorn's exit code for "worker failed to boot": the master then stops the whole server.
WORKER_BOOT_ERROR = 3
# An incoming X-Request-Id is echoed and logged only if it is short, visible ASCII (no log injection).
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
_HEALTHY = b'{"health": "true"}'
_UNHEALTHY = b'{"health": "false"}'
_JSON_HEADER = (b"content-type", b"application/json")


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
        self._access_log = IterationLog(access_log)  # a line per request, written together every 50 ms
        self._batcher: Batcher | None = None  # set once a batching model is loaded
        self._stream_executor: ThreadPoolExecutor | None = None  # made with the first stream
        self.drain = Drain()  # when running streams and WebSockets must end
        self._websockets: dict[str, Route] = {}  # WebSocket apis by url
        for api in config.apis:
            # MASERVE_VALIDATE_RESPONSES=1: check every answer against the api's response schema.
            response = ResponseSchema(api) if settings.validate_responses else None
            route = Route(api, RequestSchema(api), response)
            if api.websocket:
                self._websockets[api.url] = route
            else:
                self._routes.setdefault(api.url, {})[api.method] = route
        self._metrics_path = settings.metrics_path or None
        if self._metrics_path is not None and (self._metrics_path in self._routes or self._metrics_path in
                                               self._websockets or self._metrics_path == config.health_url):
            raise SettingsError(f"MASERVE_METRICS_PATH {self._metrics_path} is also a path of config.json: "
                                "set another one, or an empty value to serve no metrics")
        self.metrics: Metrics | None = None  # made in each worker (maserve.metrics: after the fork)
        self.in_flight_total: Callable[[], int] | None = None  # set by the worker: every worker's count
        # GET /openapi.json describes the apis, unless config.json claims that path for itself.
        declared = OPENAPI_URL in self._routes or OPENAPI_URL == config.health_url
        self._openapi_url: str | None = None if declared else OPENAPI_URL
        self._openapi = b"" if declared else json.dumps(openapi_document(config)).encode()
        # The prediction page (MASERVE_PAGE_PATH): static files; SettingsError if a path above lies under it.
        self._page = build_page(settings, config, [*self._routes, *self._websockets, config.health_url,
                                                   self._openapi_url, self._metrics_path], self._openapi_url)

    # -- ASGI entry ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await serve_websocket(self, scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._executor = ThreadPoolExecutor(INFERENCE_THREADS + self.settings.batch_threads - 1,
                                                    thread_name_prefix="maserve-infer")
                if self._metrics_path is not None:
                    self.metrics = Metrics([*self._routes, *self._websockets, self.config.health_url])
                    self.metrics.ready = lambda: self._ready.is_set() and self._gate.all_loaded()
                    self.metrics.in_flight = self.in_flight_total
                    self.metrics.start_flushing(asyncio.get_running_loop())
                self._request_id_prefix = uuid.uuid4().hex[:16].encode()  # after fork: one per worker
                self._load_task = asyncio.create_task(self._load())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for executor in (self._executor, self._stream_executor):
                    if executor is not None:
                        executor.shutdown(wait=False, cancel_futures=True)
                self._access_log.flush()
                if self.metrics is not None:
                    self.metrics.flush()
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
        if serves_batches(model):
            assert self._executor is not None
            self._batcher = Batcher(model, self._executor, self.settings.request_timeout_seconds,
                                    self.settings.max_batch_size, self.settings.batch_budget_seconds,
                                    self.settings.batch_threads)
            if self.metrics is not None:
                self._batcher.on_batch = self.metrics.batch_size.observe
        self._ready.set()
        self._gate.worker_loaded()
        if self.metrics is not None:
            self.metrics.load_seconds.set(time.perf_counter() - started)
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
        request_id = traceparent = b""
        content_type = b""
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else None
            elif name == b"x-request-id":
                request_id = value
            elif name == b"traceparent":
                traceparent = value
        request_id = self.checked_request_id(request_id)
        trace_id = trace_id_of(traceparent) if traceparent else None
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
            elif path == self._metrics_path and method in ("GET", "HEAD") and self.metrics is not None:
                await self._scrape(send, method)  # not in the access log: a scraper every few seconds
                return
            elif self._page is not None and self._page.owns(path):
                status, body, page_headers = self._page.reply(path, method)
                headers[0:1] = page_headers  # its own Content-Type (HTML, script, a sample) and cache policy
            else:
                route = self._route(path, method)
                if trace_id is not None:
                    TRACE_ID.set(trace_id)  # this request's task; the inference thread gets a copy
                answer = await self._answer(route, receive, content_type, content_length, trace_id is not None)
                if isinstance(answer, PendingStream):
                    await send_stream(self, answer, send, headers, request_id, method, path, started)
                    return
                status, body = 200, answer
        except ServiceError as exc:
            error = exc
            status, body = exc.status, exc.body()
            if isinstance(exc, MethodNotAllowed):
                headers.append((b"allow", ", ".join(exc.allowed).encode()))
            elif isinstance(exc, UpgradeRequired):
                headers.append((b"upgrade", b"websocket"))
            if isinstance(exc, PayloadTooLarge) and not self.stopping.is_set():
                headers.append(CLOSE_HEADER)  # the rest of the body is not worth reading
        except ClientGone:
            timed_out = scope.get("state", {}).get(BODY_TIMEOUT_STATE)
            if timed_out is None:
                self.log_request(request_id, method, path, 499, started, 0, None)
            else:  # maserve.http.protocol answered 408 and closed the connection
                self.log_request(request_id, method, path, 408, started, 0, RequestTimeout(timed_out))
            return
        except Exception:
            log.exception("unexpected error", extra=fields(request_id=request_id.decode()))
            error = ServiceError("internal server error")
            status, body = error.status, error.body()
        if self.stopping.is_set():
            headers.append(CLOSE_HEADER)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        if trace_id is None:
            self.log_request(request_id, method, path, status, started, len(body), error)
        else:
            self.log_request(request_id, method, path, status, started, len(body), error, trace_id=trace_id)

    async def _scrape(self, send: Send, method: str) -> None:
        assert self.metrics is not None
        body = self.metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", METRICS_CONTENT_TYPE), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def _new_request_id(self) -> bytes:
        """A unique id without a syscall per request: a random per-process prefix and a counter."""
        self._request_count += 1
        return b"%s-%08x" % (self._request_id_prefix, self._request_count)

    def _route(self, path: str, method: str) -> Route:
        by_method = self._routes.get(path)
        if by_method is None and path in self._websockets:
            raise UpgradeRequired(f"{path} is a WebSocket api: connect with a WebSocket client (ws:// or wss://)")
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
        routes += [f"WebSocket {url}" for url in self._websockets]
        routes.append(f"GET {self.config.health_url}")
        if self._openapi_url is not None:
            routes.append(f"GET {self._openapi_url}")
        return routes

    async def _answer(
        self, route: Route, receive: Receive, content_type: bytes, content_length: int | None, traced: bool = False
    ) -> bytes | PendingStream:
        boundary = check_content_type(route.api, content_type)
        limit = self.settings.max_body_bytes
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(f"request body of {content_length} bytes exceeds the limit of {limit} bytes")
        body = await read_body(receive, limit)
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
                assert self._model is not None
                # traced: the model's log lines in the inference thread carry the trace id (a copy of
                # this task's context); a batch serves several callers, so batched ones do not.
                run = contextvars.copy_context().run if traced else _call
                if route.streams:
                    answer = await loop.run_in_executor(self._executor, run, start_stream, self._model, route, body,
                                                        boundary)
                    return answer if isinstance(answer, bytes) else await open_stream(self, answer, receive)
                if self._batcher is not None:
                    return await self._batcher.submit(loop, route, body, boundary)
                if traced:
                    return await loop.run_in_executor(self._executor, run, predict_one, self._model, route, body,
                                                      boundary)
                return await loop.run_in_executor(self._executor, predict_one, self._model, route, body, boundary)
        except TimeoutError:
            if route.streams:
                raise StreamTimeout(f"no first event within {timeout:g} s (MASERVE_REQUEST_TIMEOUT_SECONDS)") from None
            raise InferenceTimeout(f"inference did not finish within {timeout:g} s") from None

    # -- what maserve.http.fastlane uses ------------------------------------------------------
    @property
    def batcher(self) -> Batcher | None:
        return self._batcher

    def ready(self) -> bool:
        """This worker's model is loaded and warmed up."""
        return self._ready.is_set()

    def fast_route(self, path: str) -> Route | None:
        """The POST route at `path` if it answers once (not a stream), else None."""
        by_method = self._routes.get(path)
        route = by_method.get("POST") if by_method is not None else None
        return None if route is None or route.streams else route

    # -- what maserve.websocket uses ----------------------------------------------------------
    @property
    def model(self) -> Model | None:
        return self._model

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        return self._executor

    def stream_executor(self) -> ThreadPoolExecutor:
        """The threads that advance sync generators (made with the first stream)."""
        if self._stream_executor is None:
            self._stream_executor = ThreadPoolExecutor(STREAM_THREADS, thread_name_prefix="maserve-stream")
        return self._stream_executor

    def websocket_route(self, path: str) -> Route | None:
        return self._websockets.get(path)

    def websocket_urls(self) -> list[str]:
        return list(self._websockets)

    def request_id(self, scope: Scope) -> bytes:
        """The caller's X-Request-Id when it is safe to log, else a new one."""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                return self.checked_request_id(value)
        return self._new_request_id()

    def checked_request_id(self, given: bytes) -> bytes:
        """The caller's id when it is safe to log (short, printable), else a new one."""
        return given if given and _REQUEST_ID.fullmatch(given) else self._new_request_id()

    async def wait_ready(self) -> bool:
        """Wait (up to the request timeout) for this worker's model; False if it is still loading."""
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.settings.request_timeout_seconds)
            except TimeoutError:
                return False
        return True

    def begin_drain(self) -> None:
        """The worker got its stop signal (the drain starts): streams and WebSockets get the drain
        window, then end. Called on the event loop."""
        self.drain.begin(self.settings.drain_seconds)

    def log_request(
        self,
        request_id: bytes,
        method: str,
        path: str,
        status: int,
        started: float,
        size: int,
        error: ServiceError | None,
        **extra: Any,
    ) -> None:
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_request(path, method, status, seconds)
        values: dict[str, Any] = {
            "request_id": request_id.decode(),
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "bytes": size,
            **extra,
        }
        if "trace_id" not in extra and (trace := TRACE_ID.get()) is not None:  # a stream's or a socket's
            values["trace_id"] = trace
        kind = "stream" if "events" in extra else "websocket" if "close_code" in extra else "request"
        if error is None:
            self._access_log.log(logging.INFO, kind if status != 499 else f"{kind}: client gone", values)
            return
        values["error_code"] = error.error_code
        values["error_msg"] = error.message
        level = logging.ERROR if status >= 500 else logging.WARNING
        self._access_log.log(level, f"{kind} failed", values)


def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


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
