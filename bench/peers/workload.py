"""The work every peer server does per request: exactly the example's service.py, without maserve.

The peer apps (litserve_app.py, ray_app.py, bentoml_service.py) serve the same model directory
as maserve (examples/mnist or examples/resnet) through the same code: the directory's
`service.py` is imported and its Model's `load`, `warmup`, `prepare` (decode + preprocess one
upload) and `predict_batch` (one onnxruntime call) are called, as maserve calls them
(src/maserve/model.py `load_model`, src/maserve/http/calls.py `batch_results`).

maserve is not installed in the peers' venvs: importing it pulls jsonschema, its config
validation and more, none of which the examples' service.py uses. service.py imports five
names, `Inputs`, `InvalidInput`, `Model`, `UploadedFile` from `maserve` and `onnx_session`
from `maserve.onnx`; when `maserve` is not importable, `install_shim()` registers minimal
stand-ins for them (same fields, and `onnx_session` makes the same CPU session as
maserve.onnx does on a worker without a GPU: CPUExecutionProvider, intra_op_num_threads=1,
inter_op_num_threads=1). With maserve installed (the project venv) the real ones are used.

Standard library + numpy/onnxruntime/pillow (what service.py itself imports).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / "examples" / "mnist"
FIELD = "images"  # the multipart field of both examples' config.json


def install_shim() -> bool:
    """Register stand-ins for `maserve` and `maserve.onnx` unless maserve is importable.
    Returns True when the shim is in place."""
    if "maserve" in sys.modules:
        return getattr(sys.modules["maserve"], "__peer_shim__", False)
    if importlib.util.find_spec("maserve") is not None:
        return False

    class ServiceError(Exception):
        status = 500
        error_code = "MASERVE.INTERNAL_ERROR"

        def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None) -> None:
            super().__init__(message)
            self.message = message
            if status is not None:
                self.status = status
            if error_code is not None:
                self.error_code = error_code

        def body(self) -> dict:
            return {"error_code": self.error_code, "error_msg": self.message}

    class InvalidInput(ServiceError):
        status = 400
        error_code = "MASERVE.INVALID_INPUT"

    @dataclass(frozen=True)
    class UploadedFile:
        filename: str
        content_type: str
        data: bytes

    @dataclass(frozen=True)
    class Inputs:
        files: dict = field(default_factory=dict)
        fields: dict = field(default_factory=dict)
        url: str = "/"
        method: str = "POST"

    class Model:
        def __init__(self, model_dir: Path, config: Any = None) -> None:
            self.model_dir = model_dir
            self.config = config

        def load(self) -> None:
            pass

        def warmup(self) -> None:
            pass

        def predict(self, inputs):
            raise NotImplementedError

        def prepare(self, inputs):
            raise NotImplementedError

        def predict_batch(self, items):
            raise NotImplementedError

    def onnx_session(path, device=None, require=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    pkg = types.ModuleType("maserve")
    pkg.__path__ = []  # a package, so `maserve.onnx` resolves
    pkg.__peer_shim__ = True
    for obj in (ServiceError, InvalidInput, UploadedFile, Inputs, Model):
        obj.__module__ = "maserve"
        setattr(pkg, obj.__name__, obj)
    onnx_mod = types.ModuleType("maserve.onnx")
    onnx_mod.onnx_session = onnx_session
    pkg.onnx = onnx_mod
    sys.modules["maserve"] = pkg
    sys.modules["maserve.onnx"] = onnx_mod
    return True


def model_dir_from_env() -> Path:
    return Path(os.environ.get("PEER_MODEL_DIR", DEFAULT_MODEL_DIR)).resolve()


class Workload:
    """One model directory's service.py, loaded and warmed up in this process."""

    def __init__(self, model_dir: Path | str | None = None) -> None:
        self.shim = install_shim()
        import maserve  # the real one or the shim

        self.maserve = maserve
        self.InvalidInput = maserve.InvalidInput
        self.model_dir = Path(model_dir).resolve() if model_dir else model_dir_from_env()
        path = self.model_dir / "service.py"
        if str(self.model_dir) not in sys.path:
            sys.path.insert(0, str(self.model_dir))  # service.py imports its siblings (preprocess.py)
        spec = importlib.util.spec_from_file_location("maserve_service", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        classes = [obj for obj in vars(module).values()
                   if inspect.isclass(obj) and issubclass(obj, maserve.Model) and obj is not maserve.Model
                   and obj.__module__ == module.__name__]
        if len(classes) != 1:
            raise ImportError(f"{path}: expected exactly one maserve.Model subclass, found {len(classes)}")
        self.model = classes[0](self.model_dir, None)  # neither example reads its config

    def load(self) -> "Workload":
        """load + warmup, as each maserve worker does before it reports healthy."""
        self.model.load()
        self.model.warmup()
        return self

    def prepare(self, data: bytes, filename: str = "upload", content_type: str = "application/octet-stream") -> Any:
        """Decode + preprocess one upload (raises the service's InvalidInput for a bad one)."""
        inputs = self.maserve.Inputs(files={FIELD: self.maserve.UploadedFile(filename, content_type, data)})
        return self.model.prepare(inputs)

    def predict_batch(self, items: list[Any]) -> list[Any]:
        """One inference for the prepared items: an answer dict, or an InvalidInput in its place."""
        results = self.model.predict_batch(items)
        if len(results) != len(items):
            raise ValueError(f"predict_batch returned {len(results)} answers for {len(items)} items")
        return results

    def predict_one(self, data: bytes, filename: str = "upload", content_type: str = "application/octet-stream") -> dict:
        """prepare + predict_batch of one: what maserve does for one request (raises InvalidInput)."""
        (answer,) = self.predict_batch([self.prepare(data, filename, content_type)])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def error_body(self, exc: Exception) -> dict:
        """maserve's error body for an InvalidInput: {"error_code": ..., "error_msg": ...}."""
        return {"error_code": getattr(exc, "error_code", "MASERVE.INVALID_INPUT"),
                "error_msg": getattr(exc, "message", str(exc))}


def is_invalid(workload: Workload, value: object) -> bool:
    return isinstance(value, workload.InvalidInput)


HEALTH_BODY = {"health": "true"}


if __name__ == "__main__":  # python bench/peers/workload.py MODEL_DIR IMAGE: the answer, in process
    w = Workload(sys.argv[1]).load()
    image = Path(sys.argv[2])
    print(json.dumps(w.predict_one(image.read_bytes(), image.name)))
