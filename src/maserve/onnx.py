"""onnxruntime sessions sized for maserve's process model."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def onnx_session(path: Path | str) -> ort.InferenceSession:
    """A CPU session with one thread: gunicorn already runs one worker per core, and a thread pool
    per worker on top of that only makes the workers fight over the cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
