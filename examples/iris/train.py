"""Train the iris classifier of this example and export it to ONNX: the second, tabular example.

Data: scikit-learn's bundled iris set (150 flowers, 4 measurements, 3 species). A seeded,
stratified held-out third is never trained on; it measures the exported ONNX model (the file the
server runs), the metrics go into config.json and the held-out rows into samples/heldout.json.
scikit-learn and skl2onnx are needed here only, never at serving time:

    python3 -m venv /tmp/iris-train
    /tmp/iris-train/bin/pip install scikit-learn skl2onnx onnx onnxruntime
    /tmp/iris-train/bin/python examples/iris/train.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
SEED = 20240611
CLASSES = ["setosa", "versicolor", "virginica"]


def main() -> None:
    data = load_iris()
    assert list(data.target_names) == CLASSES
    x = data.data.astype(np.float32)
    x_train, x_held, y_train, y_held = train_test_split(x, data.target, test_size=1 / 3, stratify=data.target, random_state=SEED)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)).fit(x_train, y_train)
    # zipmap=False: plain tensors (label, probabilities) instead of a list of maps, cheaper to serve.
    onnx_model = to_onnx(model, x_train[:1], options={id(model.steps[-1][1]): {"zipmap": False}}, target_opset=17)
    (HERE / "model.onnx").write_bytes(onnx_model.SerializeToString())

    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {session.get_inputs()[0].name: x_held})
    assert (labels == model.predict(x_held)).all(), "the ONNX export disagrees with scikit-learn"
    metrics = {
        "f1": round(float(f1_score(y_held, labels, average="macro")), 4),
        "recall": round(float(recall_score(y_held, labels, average="macro")), 4),
        "precision": round(float(precision_score(y_held, labels, average="macro")), 4),
        "accuracy": round(float(accuracy_score(y_held, labels)), 4),
    }
    config_path = HERE / "config.json"
    config = json.loads(config_path.read_text())
    config["metrics"] = metrics
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    heldout = [{"features": [round(float(v), 1) for v in row], "label": CLASSES[int(y)]} for row, y in zip(x_held, y_held)]
    lines = ",\n".join(f"  {json.dumps(row)}" for row in heldout)  # one flower per line
    (HERE / "samples" / "heldout.json").write_text(f"[\n{lines}\n]\n")
    print(f"held-out ({len(y_held)} flowers): {metrics}; model.onnx {(HERE / 'model.onnx').stat().st_size} bytes")


if __name__ == "__main__":
    main()
