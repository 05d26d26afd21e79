"""`XgSklServingBaseService`, the older ModelArts base for scikit-learn/XGBoost scripts, as a maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": `model_path` is the model
FILE. maserve passes the single `.pkl`, `.joblib`, `.model` or `.onnx` file of the model directory (an
error at start if there is none or several). The script loads it and overrides `_inference`.
"""

from __future__ import annotations

from typing import ClassVar

from model_service.model_service import SingleNodeService


class XgSklServingBaseService(SingleNodeService):
    """Base class of a scikit-learn/XGBoost inference script; `self.model_path` is the model file."""

    model_file_extensions: ClassVar[tuple[str, ...]] = (".pkl", ".joblib", ".model", ".onnx")
