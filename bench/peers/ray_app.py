"""The benchmark's Ray Serve peer: the example model (PEER_MODEL_DIR) behind a FastAPI ingress.

    PEER_MODEL_DIR=examples/mnist PEER_PORT=8000 .venv-peers/ray/bin/python bench/peers/ray_app.py
    PEER_BATCH=1 ...                                   # the @serve.batch variant

Written as Ray Serve's docs show it: `@serve.deployment(num_replicas=2)` on a class with
`@serve.ingress(app)` (a FastAPI app), the model loaded in `__init__` (once per replica), a
`POST /` route taking `images: UploadFile = File(...)`; the batching variant an
`async def` route that awaits a `@serve.batch(max_batch_size=..., batch_wait_timeout_s=...)`
method (Ray's defaults, 10 and 0.01 s) with `max_ongoing_requests` raised to the batch size,
as Ray's batching guide asks (at its default of 5 a replica never gathers a batch of 10).

Per request: Ray's HTTP proxy (an actor of its own, uvicorn) takes the request and hands it to
one of the 2 replicas (separate worker processes); there FastAPI parses the form, the route
reads the upload's bytes and calls the example's `prepare` (decode + preprocess) and
`predict_batch` (one onnxruntime session per replica, one intra-op thread). A bad upload raises
HTTPException(400) with maserve's error body as its detail; a missing `images` field is
FastAPI's own 422.

Ray is kept to this machine and small: `ray.init(num_cpus=PEER_WORKERS, include_dashboard=False,
object_store_memory=200 MB)` (each replica takes one of those CPUs; Serve's controller and proxy
take none), HTTP on 127.0.0.1:PEER_PORT (`serve.start(http_options=...)`), usage stats off
(RAY_USAGE_STATS_ENABLED=0), no runtime_env (nothing is downloaded or uploaded). Every process
Ray starts (GCS, raylet, its agents, the controller, the proxy, the replicas) is a descendant of
this script in its session and shares its fate, so the benchmark counts their CPU and memory.

Departures from the docs (and why):
- A Python driver (`ray.init` + `serve.run`, as the docs' Python API shows) instead of the
  `serve run module:app` CLI, so the local cluster is started with the limits above; the driver
  then waits for SIGTERM/SIGINT and calls `serve.shutdown()` and `ray.shutdown()`.
- `GET /health` is a route of the app, and answers 503 until `serve.status()` says the
  application is RUNNING (every replica up): Ray's own `/-/healthz` is the proxy's health, which
  is 200 before the replicas are.

Environment: PEER_MODEL_DIR (default examples/mnist), PEER_PORT (8000), PEER_WORKERS (2
replicas), PEER_BATCH (0; 1 = @serve.batch), PEER_MAX_BATCH_SIZE (10), PEER_BATCH_TIMEOUT_S
(0.01), PEER_OBJECT_STORE_MB (200).
"""


import os
import signal
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Replicas are processes Ray starts: they inherit this environment and must import workload.py.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ray  # noqa: E402
from fastapi import FastAPI, File, HTTPException, UploadFile  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from ray import serve  # noqa: E402

from workload import HEALTH_BODY, Workload  # noqa: E402

APP_NAME = "peer"
WORKERS = int(os.environ.get("PEER_WORKERS", "2"))
BATCH = os.environ.get("PEER_BATCH", "0") == "1"
MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "10"))
BATCH_TIMEOUT_S = float(os.environ.get("PEER_BATCH_TIMEOUT_S", "0.01"))

app = FastAPI()
batched_app = FastAPI()


def _health(deployment) -> object:
    if not deployment._ready:
        try:
            deployment._ready = serve.status().applications[APP_NAME].status == "RUNNING"
        except Exception:  # noqa: BLE001 - not known yet: not ready
            deployment._ready = False
    return HEALTH_BODY if deployment._ready else JSONResponse({"health": "false"}, status_code=503)


def _prepare(workload: Workload, data: bytes, images: UploadFile):
    if not data:
        raise HTTPException(400, detail={"error_code": "MASERVE.EMPTY_FILE", "error_msg": "'images' is empty"})
    try:
        return workload.prepare(data, images.filename or "upload", images.content_type or "application/octet-stream")
    except workload.InvalidInput as exc:
        raise HTTPException(400, detail=workload.error_body(exc)) from None


def _answer(workload: Workload, answer: object) -> object:
    if isinstance(answer, workload.InvalidInput):  # e.g. MNIST's "no digit"
        raise HTTPException(400, detail=workload.error_body(answer))
    return answer


@serve.deployment(num_replicas=WORKERS, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class ExampleDeployment:
    def __init__(self) -> None:
        self.workload = Workload().load()  # PEER_MODEL_DIR; load + warmup, as a maserve worker does
        self._ready = False

    @app.get("/health")
    def health(self):
        return _health(self)

    @app.post("/")
    def predict(self, images: UploadFile = File(...)):
        item = _prepare(self.workload, images.file.read(), images)
        (answer,) = self.workload.predict_batch([item])
        return _answer(self.workload, answer)


@serve.deployment(num_replicas=WORKERS, ray_actor_options={"num_cpus": 1},
                  max_ongoing_requests=max(MAX_BATCH_SIZE, 5))
@serve.ingress(batched_app)
class BatchedExampleDeployment:
    def __init__(self) -> None:
        self.workload = Workload().load()
        self._ready = False

    @batched_app.get("/health")
    def health(self):
        return _health(self)

    @batched_app.post("/")
    async def predict(self, images: UploadFile = File(...)):
        item = _prepare(self.workload, await images.read(), images)
        return _answer(self.workload, await self.predict_batch(item))

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_TIMEOUT_S)
    async def predict_batch(self, items: list) -> list:
        return self.workload.predict_batch(items)


def main() -> None:
    port = int(os.environ.get("PEER_PORT", "8000"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(num_cpus=WORKERS, include_dashboard=False,
             object_store_memory=int(os.environ.get("PEER_OBJECT_STORE_MB", "200")) * 1024 * 1024)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = BatchedExampleDeployment if BATCH else ExampleDeployment
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
        print(f"ray_app: {deployment.name} x{WORKERS} serving on http://127.0.0.1:{port}/", flush=True)
        while not stop.wait(1.0):
            pass
        print("ray_app: stopping", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
