"""The benchmark's BentoML peer: the example model (PEER_MODEL_DIR) as a BentoML 1.4 Service.

    cd bench/peers && PEER_MODEL_DIR=../../examples/mnist \
        ../../.venv-peers/bentoml/bin/bentoml serve bentoml_service:ExampleService --host 127.0.0.1 --port 8000

Written as BentoML's docs show a service: a class with `@bentoml.service(workers=2)`, the model
loaded in `__init__` (once per worker process), one `@bentoml.api` method whose parameter name is
the multipart field (`images`), served by `bentoml serve module:Service` (its production server:
one API server process per worker, supervised by BentoML's circus arbiter). The method takes a
file (`pathlib.Path`, one of BentoML's documented IO types): BentoML parses the form, writes
the upload to a per-request temporary file, and the method reads its bytes and calls the
example's `prepare` (decode + preprocess) and `predict_batch` (one onnxruntime session per
worker, one intra-op thread); it returns the example's answer dict (JSON). A bad upload raises
`bentoml.exceptions.InvalidArgument` (400) with maserve's error message.

- `POST /`: `@bentoml.api(route="/")` (BentoML's default route would be `/predict`).
- Health: BentoML's own `GET /readyz` (also /livez, /healthz). There is no `/health`.

Departures from the docs (and why):
- `pathlib.Path`, not `PIL.Image.Image`, for the upload: BentoML's PIL input opens the file
  itself with the format named by the part's Content-Type (bench/multipart.lua labels every
  upload image/png, so ResNet's JPEG would be refused), and it would bypass maserve's decode
  rules (accepted formats, pixel cap before decoding, JPEG draft mode) that every other server
  applies. The cost of the temporary file is BentoML's for any file input but an image.
- Usage tracking off (BENTOML_DO_NOT_TRACK=True in the benchmark's environment): nothing may
  leave the machine.

Environment: PEER_MODEL_DIR (default examples/mnist), PEER_WORKERS (2). The port and host are
`bentoml serve`'s --port/--host.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bentoml  # noqa: E402
from bentoml.exceptions import InvalidArgument  # noqa: E402

from workload import Workload  # noqa: E402

WORKERS = int(os.environ.get("PEER_WORKERS", "2"))


@bentoml.service(workers=WORKERS)
class ExampleService:
    def __init__(self) -> None:
        self.workload = Workload().load()  # PEER_MODEL_DIR; load + warmup, as a maserve worker does

    @bentoml.api(route="/")
    def predict(self, images: Path) -> dict:
        data = images.read_bytes()
        if not data:
            raise InvalidArgument("MASERVE.EMPTY_FILE: 'images' is empty")
        try:
            item = self.workload.prepare(data, images.name, "application/octet-stream")
        except self.workload.InvalidInput as exc:
            raise InvalidArgument(f"{exc.error_code}: {exc.message}") from None
        (answer,) = self.workload.predict_batch([item])
        if isinstance(answer, self.workload.InvalidInput):  # e.g. MNIST's "no digit"
            raise InvalidArgument(f"{answer.error_code}: {answer.message}")
        return answer
