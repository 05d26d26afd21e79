"""The model and preprocessing the comparison servers share with maserve's MNIST example."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import onnxruntime as ort

from maserve.onnx import onnx_session

REPO = Path(__file__).resolve().parent.parent
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def load(model_dir: Path) -> tuple[ModuleType, ort.InferenceSession]:
    """preprocess.py of the model folder, and its model.onnx with one intra-op thread per worker."""
    spec = importlib.util.spec_from_file_location("mnist_preprocess", model_dir / "preprocess.py")
    assert spec is not None and spec.loader is not None
    preprocess = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preprocess)
    return preprocess, onnx_session(model_dir / "model.onnx")
