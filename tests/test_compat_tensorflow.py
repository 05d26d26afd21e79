"""TfServingBaseService's default _inference with a real (tiny) SavedModel built here: the script
defines only _preprocess and _postprocess, as the platform's TensorFlow scripts may. Needs
tensorflow in this venv (CI installs tensorflow-cpu for it: .ci/run); skipped, saying so, without."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import request, start_server
from test_compat import JSON_HEADERS, model_dir

tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed (CI installs tensorflow-cpu)")


def build_saved_model(folder: Path) -> None:
    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int32, name="k")])
        def serve(self, x, k):
            return {"doubled": x * 2.0, "sum": tf.reduce_sum(x, axis=1), "k1": k + 1}

    module = Tiny()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def test_the_savedmodel_runs_through_its_serving_signature(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "compat_tf")
    build_saved_model(directory)
    server = start_server(tmp_path, directory, env={"MASERVE_WORKERS": "1"})
    try:
        conn = server.connect(timeout=60)
        good = request(conn, "POST", "/", json.dumps({"rows": [[1, 2, 3], [0.5, 0, 0]], "ks": [7, 8]}).encode(),
                       JSON_HEADERS)
        bad = request(conn, "POST", "/", json.dumps({"rows": [["a", "b", "c"]], "ks": [1]}).encode(), JSON_HEADERS)
        again = request(conn, "POST", "/", json.dumps({"rows": [[0, 0, 1]], "ks": [0]}).encode(), JSON_HEADERS)
        conn.close()
    finally:
        server.stop()
    assert good.status == 200, good.body
    assert good.json() == {"doubled": [[2.0, 4.0, 6.0], [1.0, 0.0, 0.0]], "sums": [6.0, 0.5], "first_k": 8}
    assert bad.status == 500 and bad.json()["error_code"] == "MASERVE.MODEL_ERROR"  # text for a float input
    assert again.status == 200 and again.json()["sums"] == [1.0]
