"""PTServingBaseService's default _inference with a real (tiny) TorchScript model built here: the
script defines only _preprocess and _postprocess. Needs torch in this venv (CI installs the CPU
wheel for it: .ci/run); skipped, saying so, without."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import request, start_server
from test_compat import JSON_HEADERS, model_dir

torch = pytest.importorskip("torch", reason="torch is not installed (CI installs torch==2.13.0, CPU)")


def test_the_model_file_is_called_on_each_preprocessed_value(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "compat_torch")
    layer = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    torch.jit.save(torch.jit.script(layer), str(directory / "model.pt"))
    server = start_server(tmp_path, directory, env={"MASERVE_WORKERS": "1"})
    try:
        conn = server.connect(timeout=60)
        reply = request(conn, "POST", "/", json.dumps({"rows": [[1, 2], [5, -1]]}).encode(), JSON_HEADERS)
        conn.close()
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert reply.json() == {"scores": [[1.0, 2.0, 3.0], [5.0, -1.0, 4.0]], "best": [2, 0]}
