"""A tabular model in ModelArts' predictive-analytics request shape, the shape its batch services'
csv mapping fills: `{"data": {"req_data": [{"input_1": ..., "input_4": ...}, ...]}}` answered with
`{"data": {"resp_data": [{"predict": <species>, "probability": <its probability>}, ...]}}`, one
record per row. The model is examples/iris's ONNX classifier (input_1..input_4: sepal length and
width, petal length and width, in cm), run once for all the records of a request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maserve import Inputs, Model
from maserve.onnx import onnx_session

CLASSES = ("setosa", "versicolor", "virginica")
COLUMNS = ("input_1", "input_2", "input_3", "input_4")


class TabularService(Model):
    def load(self) -> None:
        self.session = onnx_session(self.model_dir / "model.onnx")
        self.input_name = self.session.get_inputs()[0].name

    def warmup(self) -> None:
        self.predict(Inputs(fields={"data": {"req_data": [dict(zip(COLUMNS, (5.1, 3.5, 1.4, 0.2)))]}}))

    def predict(self, inputs: Inputs) -> dict[str, Any]:
        records = inputs.fields["data"]["req_data"]  # checked against config.json before predict runs
        rows = np.asarray([[record[name] for name in COLUMNS] for record in records], dtype=np.float32)
        labels, probabilities = self.session.run(None, {self.input_name: rows})
        # Rounded: the answer stays the same across onnxruntime versions and CPUs.
        return {"data": {"resp_data": [
            {"predict": CLASSES[int(label)], "probability": round(float(p[int(label)]), 4)}
            for label, p in zip(labels, probabilities)
        ]}}
