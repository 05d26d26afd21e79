"""The model contract: what a model directory's service module provides, and how it is found.

A model directory holds config.json, the model files and `service.py` with one subclass of
`Model`. The server never imports user code in the master process: each worker loads it after fork,
so native runtimes (onnxruntime's thread pools) are never shared across a fork.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from maserve.config import ModelConfig

SERVICE_MODULE = "service.py"


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Inputs:
    """A decoded request: file fields, plain form fields or a JSON body, per the api's schema."""

    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    # The api called, for services that declare several in config.json.
    url: str = "/"
    method: str = "POST"


@runtime_checkable
class ModelProtocol(Protocol):
    """What the server calls on a model: for type checkers and for code that wraps a model."""

    def load(self) -> None: ...

    def warmup(self) -> None: ...

    def predict(self, inputs: Inputs) -> Any: ...


class Model:
    """Subclass this in `service.py` (it satisfies `ModelProtocol`).

    `load` runs once per worker before the service reports healthy, `warmup` right after it (one
    real inference, so the first caller does not pay for lazy initialisation), and `predict` once
    per request, in a worker thread, returning what becomes the JSON response.
    """

    def __init__(self, model_dir: Path, config: ModelConfig) -> None:
        self.model_dir = model_dir
        self.config = config

    def load(self) -> None:
        """Load weights and sessions. Raise to refuse to start."""

    def warmup(self) -> None:
        """Run one inference. Raise to refuse to start."""

    def predict(self, inputs: Inputs) -> Any:
        """Answer one request. Raise maserve.InvalidInput for input the model cannot use."""
        raise NotImplementedError

    # -- opt-in batching ----------------------------------------------------------------------
    # A model that overrides `predict_batch` is served in batches: requests that arrive while the
    # model is busy are gathered, each goes through `prepare` alone (its errors fail only that
    # request), then one `predict_batch` call answers them all. One runtime call per batch instead
    # of per request, and no thread hand-off while batches are quick (they then run on the event
    # loop: maserve.http.batcher.INLINE_BATCH_SECONDS), is what makes a small model faster to serve.
    # `predict` is still used on its own (warm-up, `maserve predict`), so keep it consistent.
    # A batch is also kept within MASERVE_BATCH_BUDGET_SECONDS of expected model time, and at most
    # MASERVE_MAX_BATCH_SIZE requests or the model's own `max_batch_size` (e.g. what fits on its GPU).

    max_batch_size: int | None = None

    def prepare(self, inputs: Inputs) -> Any:
        """Batching: one request → the item `predict_batch` takes (decode, preprocess). Raise
        maserve.InvalidInput for input the model cannot use."""
        raise NotImplementedError

    def predict_batch(self, items: list[Any]) -> list[Any]:
        """Batching: the answers to `prepare`d items, in their order, one per item. An exception
        (e.g. maserve.InvalidInput) in an item's place fails that request alone."""
        raise NotImplementedError


def serves_batches(model: object) -> bool:
    """Whether the server gathers requests into `predict_batch` calls: the model overrides it.
    (A function, not a Model attribute, so it cannot clash with a name a service already uses.)"""
    return isinstance(model, Model) and type(model).predict_batch is not Model.predict_batch


def load_model(model_dir: Path, config: ModelConfig) -> Model:
    """Import `service.py` from the model directory and instantiate its Model subclass.

    Without `service.py`, a ModelArts `customize_service.py` is served through maserve.compat, so a
    script written for the platform's built-in images runs unchanged.
    """
    path = model_dir / SERVICE_MODULE
    if not path.is_file():
        from maserve.compat import COMPAT_MODULE, CustomizeService  # here: maserve.compat imports this module

        if (model_dir / COMPAT_MODULE).is_file():
            return CustomizeService(model_dir, config)
        raise ImportError(
            f"{path}: not found; a model directory needs a {SERVICE_MODULE} with a maserve.Model subclass "
            f"(or a ModelArts {COMPAT_MODULE})"
        )
    sys.path.insert(0, str(model_dir))  # lets the service import its sibling modules
    spec = importlib.util.spec_from_file_location("maserve_service", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Model) and obj is not Model and obj.__module__ == module.__name__
    ]
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise ImportError(f"{path}: expected exactly one maserve.Model subclass, found {names}")
    return classes[0](model_dir, config)
