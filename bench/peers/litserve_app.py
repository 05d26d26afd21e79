"""The benchmark's LitServe peer: the example model (PEER_MODEL_DIR) as a LitAPI.

    PEER_MODEL_DIR=examples/mnist PEER_PORT=8000 .venv-peers/litserve/bin/python bench/peers/litserve_app.py
    PEER_BATCH=1 ...                                   # the batching variant

Written as LitServe's docs show it (LitAPI with setup / decode_request / predict /
encode_response, `LitServer(api, accelerator="cpu", workers_per_device=2)`, the
"Production Setup" `fast_queue=True` for more than 100 requests/s; batching with
`max_batch_size` / `batch_timeout` on the LitAPI and `batch` / `unbatch`):

- `POST /` (api_path="/"), multipart field `images`: LitServe's API server process parses the
  form (`await request.form()`) and puts it on the inference workers' queue; `decode_request`
  (in a worker) reads the upload's bytes (`request["images"].file.read()`, as LitServe's file
  examples do) and runs the example's `prepare` (decode + preprocess), `predict` its
  `predict_batch` (one onnxruntime session per worker, one intra-op thread), `encode_response`
  returns the example's answer dict. A bad upload raises HTTPException(400) with maserve's
  error body as its detail.
- `GET /health` is LitServe's own: 200 "ok" once every inference worker has run `setup`
  (which loads the model and runs the example's warm-up), 503 "not ready" before.

Departures from the docs (and why):
- `generate_client_file=False`: `run()` would otherwise write a client.py into the working
  directory (the repository root).
- host 127.0.0.1 and the port from PEER_PORT, like every server of the benchmark.
- SIGTERM is turned into KeyboardInterrupt, so `LitServer.run` shuts its processes down as it
  does on Ctrl-C; with Python's default SIGTERM the master dies alone and leaves its API
  servers, inference workers and multiprocessing manager running.

Environment: PEER_MODEL_DIR (default examples/mnist), PEER_PORT (8000), PEER_WORKERS (2),
PEER_BATCH (0; 1 = batching), PEER_MAX_BATCH_SIZE (10, as Ray's @serve.batch default), PEER_BATCH_TIMEOUT_S (0.01, idem),
PEER_FAST_QUEUE (1; 0 = multiprocessing queues instead of ZeroMQ).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import litserve as ls  # noqa: E402
from fastapi import HTTPException  # noqa: E402

from workload import Workload  # noqa: E402

BATCH = os.environ.get("PEER_BATCH", "0") == "1"


def _upload(request) -> tuple[bytes, str, str]:
    """The `images` file of the parsed form (a starlette UploadFile), or a 400."""
    upload = request.get("images") if hasattr(request, "get") else None
    if upload is None or not hasattr(upload, "file"):
        raise HTTPException(status_code=400, detail={"error_code": "MASERVE.MISSING_FIELD",
                                                     "error_msg": "multipart/form-data field 'images' (a file) is required"})
    data = upload.file.read()
    if not data:
        raise HTTPException(status_code=400, detail={"error_code": "MASERVE.EMPTY_FILE",
                                                     "error_msg": "'images' is empty"})
    return data, upload.filename or "upload", upload.content_type or "application/octet-stream"


class ExampleAPI(ls.LitAPI):
    def setup(self, device):
        self.workload = Workload().load()  # PEER_MODEL_DIR; load + warmup, as a maserve worker does

    def decode_request(self, request):
        data, filename, content_type = _upload(request)
        try:
            return self.workload.prepare(data, filename, content_type)
        except self.workload.InvalidInput as exc:
            raise HTTPException(status_code=400, detail=self.workload.error_body(exc)) from None

    def predict(self, x):
        (answer,) = self.workload.predict_batch([x])
        return answer

    def encode_response(self, output):
        if isinstance(output, self.workload.InvalidInput):  # e.g. MNIST's "no digit"
            raise HTTPException(status_code=400, detail=self.workload.error_body(output))
        return output


class BatchedExampleAPI(ExampleAPI):
    """The batching variant: LitServe gathers up to max_batch_size requests (waiting at most
    batch_timeout), decodes each, and `predict` gets the list."""

    def batch(self, inputs):
        return list(inputs)  # the example's predict_batch takes the list of prepared items

    def predict(self, x):
        return self.workload.predict_batch(x)

    def unbatch(self, output):
        return list(output)


def _sigterm_as_ctrl_c(signum, frame):
    raise KeyboardInterrupt  # LitServer.run's own graceful shutdown (workers, API servers, manager)


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    workers = int(os.environ.get("PEER_WORKERS", "2"))
    port = int(os.environ.get("PEER_PORT", "8000"))
    if BATCH:
        api = BatchedExampleAPI(api_path="/", max_batch_size=int(os.environ.get("PEER_MAX_BATCH_SIZE", "10")),
                                batch_timeout=float(os.environ.get("PEER_BATCH_TIMEOUT_S", "0.01")))
    else:
        api = ExampleAPI(api_path="/")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers,
                          fast_queue=os.environ.get("PEER_FAST_QUEUE", "1") == "1")
    server.run(host="127.0.0.1", port=port, generate_client_file=False)


if __name__ == "__main__":
    main()
