"""Serve a ModelArts `customize_service.py` unchanged: an adapter from maserve's Model to the platform's API.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": the platform's built-in
inference images import `customize_service.py` from the model directory, construct its one subclass
of a `model_service` base class with `(model_name, model_path)` and answer each request with what its
`_preprocess` → `_inference` → `_postprocess` pipeline returns. Users moving to a custom image keep
that script; `load_model` picks this adapter when a model directory has it instead of `service.py`.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from maserve.config import MULTIPART, ModelConfig
from maserve.model import Inputs, Model
from model_service.model_service import SingleNodeService

COMPAT_MODULE = "customize_service.py"
# `1`: XgSklServingBaseService answers wrapped as {"data": {"resp_data": <answer>}}, as that runtime
# appears to do (seen in scripts' expectations, not documented), for clients that read it so.
RESP_DATA_ENV = "MASERVE_COMPAT_RESP_DATA"


class CustomizeService(Model):
    """Runs the script's service class in a maserve worker.

    The script is imported in `load` (after fork, like service.py). There is no warm-up: only the
    script knows what a valid input looks like.
    """

    def __init__(self, model_dir: Path, config: ModelConfig) -> None:
        super().__init__(model_dir, config)
        self.service: SingleNodeService | None = None
        # Platform scripts often keep per-request state on `self` between _preprocess and
        # _postprocess: one request at a time per worker, whatever maserve's thread count.
        self._one_at_a_time = threading.Lock()

    def load(self) -> None:
        # The platform's runtimes run scripts from the model directory: `open("labels.txt")` works.
        self.model_dir = self.model_dir.resolve()
        os.chdir(self.model_dir)
        path = self.model_dir / COMPAT_MODULE
        service_class = find_service_class(import_script(path), path)
        if service_class._inference is SingleNodeService._inference and service_class.inference is SingleNodeService.inference:
            # (the TensorFlow, PyTorch and XgSkl bases run the model themselves: not refused.)
            # Refuse at start rather than answer 500 to every request.
            raise ImportError(
                f"{path}: {service_class.__name__} must override _inference; SingleNodeService does not run "
                "a model (the TensorFlow, PyTorch and XgSkl bases do)"
            )
        model_dir = self.model_dir.resolve()
        model_path = service_class.resolve_model_path(model_dir)
        if _takes_one_argument(service_class):
            self.service = service_class(model_path)  # XgSklServingBaseService scripts: model_path alone
        else:
            # The platform passes the model's name; the model directory's name stands for it here.
            self.service = service_class(model_dir.name, model_path)
        if service_class._inference.__module__.startswith("model_service.") and hasattr(
                self.service, "load_default_model"):
            self.service.load_default_model()  # the base runs the model: load it at start, not on a request
        self._raw_json = bool(getattr(service_class, "raw_json_body", False))
        self._multipart_urls = {(a.method, a.url) for a in self.config.apis if a.request_content_type == MULTIPART}
        self._wrap = self._raw_json and os.environ.get(RESP_DATA_ENV, "") == "1"

    def predict(self, inputs: Inputs) -> Any:
        assert self.service is not None
        if self._raw_json and not inputs.files and (inputs.method, inputs.url) not in self._multipart_urls:
            data: Any = json.dumps(inputs.fields, ensure_ascii=False)  # that runtime hands over the body's text
        else:
            data = request_data(inputs)
        with self._one_at_a_time:
            answer = self.service.inference(data)
        return {"data": {"resp_data": answer}} if self._wrap else answer


def _takes_one_argument(service_class: type) -> bool:
    """Whether the script's constructor takes one positional argument (model_path), not two."""
    try:
        parameters = list(inspect.signature(service_class.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 1


def request_data(inputs: Inputs) -> Any:
    """The `data` the platform hands `_preprocess`.

    Multipart: `{field: {file name: file object}}` per file field (io.BytesIO with `.name` set, as
    scripts call `Image.open` on it) and plain fields as their strings. JSON: the parsed body.
    """
    data: dict[str, Any] = dict(inputs.fields)
    for field_name, upload in inputs.files.items():
        file_object = io.BytesIO(upload.data)
        file_object.name = upload.filename
        data[field_name] = {upload.filename: file_object}
    return data


# Top-level modules of the platform's images that scripts import: alias → maserve's module.
PLATFORM_MODULES = {"log": "model_service.log", "metric": "model_service.metric",
                    "metric.metrics_manager": "model_service.metric"}


def provide_platform_modules() -> None:
    """Make `import log` and `from metric.metrics_manager import MetricsManager` work, unless the
    model directory (or an installed package) has a module of that name, which then wins."""
    for alias, target in PLATFORM_MODULES.items():
        top = alias.split(".")[0]
        if alias in sys.modules or (top == alias and importlib.util.find_spec(alias) is not None):
            continue
        if top != alias and sys.modules.get(top) is not importlib.import_module(PLATFORM_MODULES[top]):
            continue  # the model's own `metric` package: leave its submodules alone
        sys.modules[alias] = importlib.import_module(target)


def import_script(path: Path) -> ModuleType:
    """Import the script as `customize_service`, with its directory importable for sibling modules
    and the platform's helper modules (log, metric) provided."""
    sys.path.insert(0, str(path.parent))
    provide_platform_modules()
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def find_service_class(module: ModuleType, path: Path) -> type[SingleNodeService]:
    """The script's one concrete service class (an intermediate base of it defined there is skipped)."""
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, SingleNodeService) and obj.__module__ == module.__name__
    ]
    leaves = [c for c in candidates if not any(o is not c and issubclass(o, c) for o in candidates)]
    if len(leaves) != 1:
        names = ", ".join(c.__name__ for c in leaves) or "none"
        raise ImportError(
            f"{path}: expected exactly one class deriving from a model_service base class "
            f"(PTServingBaseService, TfServingBaseService, XgSklServingBaseService, SingleNodeService), found {names}"
        )
    return leaves[0]
