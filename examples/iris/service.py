"""The iris example: `POST /` with `{"features": [4 measurements in cm]}` → the species.

The request schema in config.json (four numbers) is enforced by maserve before `predict` runs, so
this service only turns the row into a tensor; scikit-learn is not needed, the model is ONNX.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maserve import Inputs, Model
from maserve.onnx import onnx_session

CLASSES = ("setosa", "versicolor", "virginica")


class IrisService(Model):
    def load(self) -> None:
        self.session = onnx_session(self.model_dir / "model.onnx")
        self.input_name = self.session.get_inputs()[0].name

    def warmup(self) -> None:
        self.predict(Inputs(fields={"features": [5.1, 3.5, 1.4, 0.2]}))

    def predict(self, inputs: Inputs) -> dict[str, Any]:
        row = np.asarray([inputs.fields["features"]], dtype=np.float32)
        labels, probabilities = self.session.run(None, {self.input_name: row})
        # Rounded: the answer stays the same across onnxruntime versions and CPUs.
        return {
            "label": CLASSES[int(labels[0])],
            "probabilities": {name: round(float(p), 4) for name, p in zip(CLASSES, probabilities[0])},
        }
