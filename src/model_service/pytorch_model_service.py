"""`PTServingBaseService`, the ModelArts base class for PyTorch inference scripts, as a maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": `model_path` is the model
FILE. maserve passes the single `.pt`, `.pth` or `.onnx` file of the model directory (an error at
start if there is none or several). The platform's base loads and runs the model with torch; here the
script loads it in `__init__` and overrides `_inference` (maserve's image carries no torch; an
exported `.onnx` runs on onnxruntime).
"""

from __future__ import annotations

from typing import ClassVar

from model_service.model_service import SingleNodeService


class PTServingBaseService(SingleNodeService):
    """Base class of a PyTorch inference script; `self.model_path` is the model file."""

    model_file_extensions: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".onnx")
