"""`SingleNodeService`, the base of every ModelArts inference base class, as a thin maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": a `customize_service.py`
subclasses one of the platform's base classes, is constructed with `(model_name, model_path)`, and
serves each request through `_preprocess(data)` → `_inference(data)` → `_postprocess(data)`; what
`_postprocess` returns is the JSON response. `data` is, for a multipart upload, one dict per form
field mapping file name → binary file object (plain fields as their string values) and, for a JSON
request, the parsed body.

The platform's framework-specific bases also load the model and run it (TensorFlow Serving, torch);
maserve's image carries no framework, so the defaults here are minimal and the script overrides
them: `_preprocess` and `_postprocess` pass data through, `_inference` raises NotImplementedError
(the TensorFlow, PyTorch and XgSkl bases have their runtimes' default `_inference`, loading the
model with the framework only when a script relies on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from maserve.errors import InvalidInput


class ModelFileError(Exception):
    """The model directory does not hold exactly one model file for a base that needs a file path."""


class SingleNodeService:
    """Base class of a ModelArts inference script; `model_path` is the model directory.

    Subclasses set `model_file_extensions` when the platform hands them the model FILE instead
    (PyTorch, scikit-learn/XGBoost); maserve then finds the single such file in the directory.
    """

    # Empty: `model_path` is the model directory. Otherwise: the suffixes of the one model file.
    model_file_extensions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_name: str, model_path: str) -> None:
        self.model_name = model_name
        self.model_path = model_path

    @classmethod
    def resolve_model_path(cls, model_dir: Path) -> str:
        """What the platform passes as `model_path` for this base: the directory or its model file."""
        if not cls.model_file_extensions:
            return str(model_dir)
        platform_base = next(c for c in cls.__mro__ if c.__module__.startswith("model_service."))
        return str(find_model_file(model_dir, cls.model_file_extensions, f"{cls.__name__}, a {platform_base.__name__}"))

    def inference(self, data: Any) -> Any:
        """Run one request through the pipeline, as the platform does.

        ValueError and KeyError from `_preprocess` become a 400 (maserve.InvalidInput): there they
        almost always mean the request lacks what the script expects. Anything else the script
        raises is its defect and answers 500.
        """
        try:
            data = self._preprocess(data)
        except (ValueError, KeyError) as exc:
            raise InvalidInput(_describe(exc)) from exc
        data = self._inference(data)
        return self._postprocess(data)

    def _preprocess(self, data: Any) -> Any:
        """Turn the request data into model input. Default: unchanged."""
        return data

    def _inference(self, data: Any) -> Any:
        """Run the model. No default: maserve does not run a framework for the script."""
        raise NotImplementedError(
            f"{type(self).__name__} must override _inference: under maserve the base class does not run the model"
        )

    def _postprocess(self, data: Any) -> Any:
        """Turn model output into the JSON response. Default: unchanged."""
        return data


def find_model_file(model_dir: Path, extensions: tuple[str, ...], service: str) -> Path:
    """The one file directly in `model_dir` whose suffix is in `extensions`; a clear error otherwise."""
    found = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    wanted = ", ".join(f"*{ext}" for ext in extensions)
    if not found:
        raise ModelFileError(f"{model_dir}: no model file ({wanted}) for {service}, which takes the model file as model_path")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelFileError(
            f"{model_dir}: several model files ({names}) for {service}, which takes one model file as model_path; keep one"
        )
    return found[0]


def _describe(exc: ValueError | KeyError) -> str:
    """The caller-facing message: the exception's own text (a KeyError's text is only the key)."""
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r} in the request" if exc.args else "missing key in the request"
    return str(exc) or type(exc).__name__
