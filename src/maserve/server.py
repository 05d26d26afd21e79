"""The process layer: gunicorn master plus uvicorn workers, and ModelArts' stop sequence.

On SIGTERM (or SIGINT) the master keeps serving for the grace period (new connections and
requests are still answered, as ModelArts' rolling upgrade expects), then stops accepting and
gives in-flight requests up to the drain period before it exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from maserve import accelerator
from maserve.app import MaserveApp
from maserve.config import ModelConfig
from maserve import metrics
from maserve.http import calls
from maserve.http.accept import NOT_ACCEPTING, Acceptor, ConnectionBoard
from maserve.http.limits import Guard, InFlightBoard, Limits, raise_open_file_limit
from maserve.http.fastlane import FastLane
from maserve.http.protocol import MaserveHttpProtocol
from maserve.logs import fields, logging_config
from maserve.settings import THREADS_ENV, Settings
from maserve.tls import make_self_signed
from maserve.ws_protocol import PlatformWebSocketProtocol

log = logging.getLogger("maserve.server")


class _WorkerServer(Server):
    """A worker leaves SIGINT to the master: Ctrl-C in a terminal reaches every process of the group.
    Its SIGTERM (the master's, when the grace period ends) starts the drain: the app hears of it so
    that streams and WebSockets get the drain window and then end cleanly."""

    def __init__(self, config: Any, on_drain: Callable[[], None], connections: ConnectionBoard | None = None,
                 slot: int = 0) -> None:
        super().__init__(config=config)
        self._on_drain = on_drain
        self._board = connections
        self._slot = slot
        self._acceptors: list[Acceptor] = []

    async def startup(self, sockets: list[Any] | None = None) -> None:
        """uvicorn's start-up without its listeners: maserve.http.accept accepts, one connection
        per wake-up, sharing them with the other workers."""
        if sockets is None:
            await super().startup()
            return
        await super().startup(sockets=[])
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state)

        loop = asyncio.get_running_loop()
        connections = self.server_state.connections
        self._acceptors = [Acceptor(loop, sock, create_protocol, connections, self._board, self._slot, config.ssl)
                           for sock in sockets]
        MaserveHttpProtocol.on_connections_changed = self._publish_connections
        for acceptor in self._acceptors:
            acceptor.start()

    def _publish_connections(self) -> None:
        for acceptor in self._acceptors:
            acceptor.publish()

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for acceptor in self._acceptors:
            acceptor.stop()
        await super().shutdown(sockets=sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGINT:
            return
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self._on_drain)
        except RuntimeError:  # no loop running yet: nothing is streaming
            pass
        super().handle_exit(sig, frame)


class MaserveWorker(UvicornWorker):
    """uvicorn worker (uvloop + httptools) without uvicorn's own access log."""

    CONFIG_KWARGS = {
        "loop": "auto",
        "http": MaserveHttpProtocol,
        "ws": PlatformWebSocketProtocol,
        "access_log": False,
        "lifespan": "on",
        "server_header": False,
        "proxy_headers": False,
        # The heartbeat (and the check that the master is alive) every 2 s, not gunicorn's 15:
        # a worker whose master was killed stops listening within seconds.
        "timeout_notify": 2,
    }

    board: InFlightBoard | None = None  # set by the master before the fork
    connection_board: ConnectionBoard | None = None  # likewise
    slot = 0

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        settings = self.wsgi.settings
        try:  # before the model loads: its runtime must see only this worker's GPU
            accelerator.place_worker(self.slot, settings.device, settings.require_accelerator)
        except accelerator.AcceleratorUnavailable as exc:
            log.error(f"{exc}: stopping this server", extra=fields(pid=os.getpid()))
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None
        self.config.ws_max_size = settings.max_body_bytes  # past it: close code 1009
        limits = Limits.derive(settings)
        MaserveHttpProtocol.guard = Guard(limits, self.wsgi.config.health_url)
        MaserveHttpProtocol.fast_lane = FastLane(self.wsgi)
        PlatformWebSocketProtocol.send_timeout = limits.send_timeout
        if self.board is not None:
            MaserveHttpProtocol.publish = staticmethod(self.board.writer(self.slot))  # type: ignore[assignment]
            board = self.board
            self.wsgi.in_flight_total = board.total  # for the metrics scrape
        calls.restart_worker = self._restart
        log.debug("worker limits", extra=fields(pid=os.getpid(), max_connections=limits.max_connections,
                                                 max_in_flight=limits.max_in_flight))
        self._server = _WorkerServer(self.config, self.wsgi.begin_drain, self.connection_board, self.slot)
        self._install_sigquit_handler()
        await self._server.serve(sockets=self.sockets)
        if not self._server.started:
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)

    def _restart(self, reason: str) -> None:
        """Stop this worker gracefully (from any thread): the master starts a fresh one."""
        log.warning(f"{reason}: this worker stops after answering what it holds; the master starts a new one",
                    extra=fields(pid=os.getpid()))
        self._server.should_exit = True

    async def callback_notify(self) -> None:
        """Heartbeat to the master; a worker whose master died (kill -9) stops instead of lingering."""
        if os.getppid() != self.ppid:
            log.warning("the master process is gone: this worker stops", extra=fields(pid=os.getpid()))
            self._server.should_exit = True
            return
        self.notify()


class GraceArbiter(Arbiter):
    """gunicorn's master, with a grace period between the stop signal and the graceful stop."""

    def __init__(self, app: BaseApplication, grace_seconds: float, on_stop: Callable[[], None]) -> None:
        super().__init__(app)
        self.grace_seconds = grace_seconds
        self.on_stop = on_stop
        self.stop_at: float | None = None
        self.board = InFlightBoard(self.num_workers + 4)
        self.connections = ConnectionBoard(self.num_workers + 4)  # same slots (maserve.http.accept)
        self.exit_statuses: dict[int, int] = {}  # pid → wait status, for child_exit

    def reap_workers(self) -> None:
        """gunicorn's reaping, with each worker's wait status kept: child_exit logs how it died.
        (The master is single-threaded; os.waitpid is wrapped only for the length of the call.)"""
        original = os.waitpid

        def recording(pid: int, options: int) -> tuple[int, int]:
            wpid, status = original(pid, options)
            if wpid:
                self.exit_statuses[wpid] = status
            return wpid, status

        os.waitpid = recording
        try:
            super().reap_workers()
        finally:
            os.waitpid = original

    def _begin_grace(self, name: str) -> None:
        if self.stop_at is not None:
            if name == "SIGINT":  # a second Ctrl-C: skip the rest of the grace period
                log.info("second SIGINT: ending the grace period now")
                self.stop_at = time.monotonic()
            else:
                log.info(f"{name} received again: already stopping")
            return
        self.stop_at = time.monotonic() + self.grace_seconds
        self.on_stop()
        log.info(
            f"{name} received: still serving for the {self.grace_seconds:g} s grace period, then draining",
            extra=fields(signal=name, grace_seconds=self.grace_seconds),
        )

    def handle_term(self) -> None:
        self._begin_grace("SIGTERM")

    def handle_int(self) -> None:
        self._begin_grace("SIGINT")

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        if self.stop_at is not None:
            timeout = max(0.0, min(timeout, self.stop_at - time.monotonic()))
        return super().wait_for_signals(timeout=timeout)

    def murder_workers(self) -> None:
        super().murder_workers()
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            log.info(
                "grace period over: no longer accepting; draining in-flight requests",
                extra=fields(drain_seconds=self.cfg.graceful_timeout),
            )
            raise StopIteration


class MaserveApplication(BaseApplication):
    """gunicorn embedded: settings come from Settings, not from gunicorn's own CLI."""

    def __init__(self, settings: Settings, config: ModelConfig, app: MaserveApp) -> None:
        self.settings = settings
        self.model_config = config
        self.asgi_app = app
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings, self.model_config).items():
            self.cfg.set(key, value)

    def load(self) -> MaserveApp:
        return self.asgi_app

    def run(self) -> None:
        GraceArbiter(self, self.settings.grace_seconds, self.asgi_app.stopping.set).run()


def gunicorn_options(settings: Settings, config: ModelConfig) -> dict[str, Any]:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    options: dict[str, Any] = {
        "bind": [f"{host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": f"{__name__}.MaserveWorker",
        "keepalive": settings.keepalive_seconds,
        "graceful_timeout": math.ceil(settings.drain_seconds),
        "timeout": 30,
        "proc_name": "maserve",
        "logconfig_dict": logging_config(settings.log_format),
        "control_socket_disable": True,
        "when_ready": _when_ready(settings, config),
        "pre_fork": _pre_fork,
        "child_exit": _child_exit,
        "on_exit": _on_exit,
    }
    if config.uses_tls:
        cert, key = settings.tls_cert, settings.tls_key
        if cert is None or key is None:
            cert, key = make_self_signed(Path(tempfile.mkdtemp(prefix="maserve-tls-")))
            log.info("config.json asks for https: made a self-signed certificate", extra=fields(cert=str(cert)))
        options.update(certfile=str(cert), keyfile=str(key))
    return options


def _when_ready(settings: Settings, config: ModelConfig) -> Any:
    def when_ready(arbiter: Arbiter) -> None:
        log.info(
            "maserve started",
            extra=fields(
                model_dir=str(settings.model_dir),
                config=str(config.path),
                host=settings.host,
                port=settings.port,
                protocol="https" if config.uses_tls else "http",
                workers=settings.workers,
                intra_op_threads=settings.threads_per_worker,
                device=settings.device,  # each worker's own line says where its model runs
                gpus_visible=accelerator.inventory().count,
                keepalive_seconds=settings.keepalive_seconds,
                grace_seconds=settings.grace_seconds,
                drain_seconds=settings.drain_seconds,
                request_timeout_seconds=settings.request_timeout_seconds,
                max_body_bytes=settings.max_body_bytes,
                routes=[f"{api.method} {api.url}" for api in config.apis] + [f"GET {config.health_url}"],
                page=settings.page_path or None,  # the prediction page (maserve.page); None: off
            ),
        )

    return when_ready


def _pre_fork(arbiter: Arbiter, worker: Any) -> None:
    """Give the new worker a slot on the in-flight board (in the master, before the fork)."""
    board = getattr(arbiter, "board", None)
    if board is not None:
        worker.board = board
        worker.slot = board.free_slot({getattr(w, "slot", -1) for w in arbiter.WORKERS.values()})
        worker.connection_board = getattr(arbiter, "connections", None)


def _child_exit(arbiter: Arbiter, worker: Any) -> None:
    """A worker's end: INFO when the server stops it, WARNING with the signal or exit code and the
    requests it had in flight when it died (killed, out of memory, crashed)."""
    metrics.mark_dead(worker.pid)
    status = getattr(arbiter, "exit_statuses", {}).pop(worker.pid, None)
    board = getattr(arbiter, "board", None)
    in_flight = board.take(worker.slot) if board is not None and hasattr(worker, "slot") else None
    connections = getattr(arbiter, "connections", None)
    if connections is not None and hasattr(worker, "slot"):
        connections.publish(worker.slot, NOT_ACCEPTING)  # its siblings stop stepping back for it
    values: dict[str, Any] = {"pid": worker.pid, "requests_in_flight": in_flight}
    if status is None:
        log.info("worker exited", extra=fields(**values))
        return
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        values["signal"] = name
        how = f"killed by {name}" + (" (out of memory? the kernel's OOM killer sends it)" if number == signal.SIGKILL else "")
    else:
        values["exit_code"] = os.WEXITSTATUS(status)
        how = f"exited with code {values['exit_code']}"
    stopping = getattr(arbiter, "stop_at", None) is not None
    expected = stopping and (values.get("exit_code") == 0 or values.get("signal") in ("SIGTERM", "SIGQUIT"))
    if expected or values.get("exit_code") == 0:
        log.info(f"worker {how}", extra=fields(**values))
    else:
        log.warning(f"worker {how}; gunicorn starts a new one", extra=fields(**values))


def _on_exit(arbiter: Arbiter) -> None:
    metrics.remove_directory()
    log.info("all workers stopped: exiting")


def serve(settings: Settings, config: ModelConfig, app: MaserveApp) -> None:
    if settings.metrics_path:
        metrics.prepare_directory()  # before the fork, and before prometheus_client is imported
    os.environ[THREADS_ENV] = str(settings.threads_per_worker)  # maserve.onnx's sessions in every worker
    before, after = raise_open_file_limit()  # before the fork: every worker inherits it
    limits = Limits.derive(settings, after)
    log.info("open-file limit and per-worker caps",
             extra=fields(open_files_before=before, open_files=after, max_connections=limits.max_connections,
                          max_in_flight=limits.max_in_flight, header_timeout_seconds=limits.header_timeout,
                          body_timeout_seconds=limits.body_timeout, send_timeout_seconds=limits.send_timeout))
    MaserveApplication(settings, config, app).run()
