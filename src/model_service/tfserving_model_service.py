"""`TfServingBaseService`, the ModelArts base class for TensorFlow inference scripts, as a maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": `model_path` is the model
DIRECTORY. The platform's base runs the SavedModel through TensorFlow Serving; maserve has no
TensorFlow, so the script loads its model itself and overrides `_inference`.
"""

from __future__ import annotations

from model_service.model_service import SingleNodeService


class TfServingBaseService(SingleNodeService):
    """Base class of a TensorFlow inference script; `self.model_path` is the model directory."""
