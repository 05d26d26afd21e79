"""`PTServingBaseService`, the ModelArts base class for PyTorch inference scripts, as a maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": `model_path` is the model
FILE. maserve passes the single `.pt`, `.pth` or `.onnx` file of the model directory (an error at
start if there is none or several). As the platform's base does, the default `_inference` calls
`self.model` on each value of the dict `_preprocess` returned (`{key: self.model(value)}`, under
`torch.no_grad()`), so a script may define only `_preprocess` and `_postprocess`: `self.model` is
the script's own when its constructor sets it (the usual `load_state_dict` into its network),
else the model file loaded at start (TorchScript with `torch.jit.load`, else a whole pickled module
with `torch.load`). torch is imported only then; it is the model's own dependency. A script that
exports to `.onnx` overrides `_inference` (maserve.onnx.onnx_session).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from model_service.model_service import SingleNodeService


class PTServingBaseService(SingleNodeService):
    """Base class of a PyTorch inference script; `self.model_path` is the model file."""

    model_file_extensions: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".onnx")

    def load_default_model(self) -> None:
        """For the default `_inference`: the script's `self.model`, or the model file loaded now."""
        if getattr(self, "model", None) is not None:
            return
        path = Path(self.model_path)
        if path.suffix.lower() == ".onnx":
            raise NotImplementedError(f"{path.name}: an ONNX model needs the script's own _inference "
                                      "(maserve.onnx.onnx_session); PTServingBaseService's default runs torch")
        try:
            import torch
        except ImportError as exc:
            raise ImportError(f"{type(self).__name__} leaves _inference to PTServingBaseService, whose default runs "
                              f"the model with torch: install torch (the model's dependencies): {exc}") from exc
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError:  # not TorchScript: a whole module saved with torch.save
            model = torch.load(str(path), map_location="cpu", weights_only=False)
        if not callable(model):
            raise TypeError(f"{path.name} holds a {type(model).__name__} (a state_dict?), not a model: load it into "
                            "your network in the script's __init__ (self.model = ...)")
        if hasattr(model, "eval"):
            model.eval()
        self.model = model

    def _inference(self, data: Any) -> Any:
        import torch

        if getattr(self, "model", None) is None:
            self.load_default_model()
        if not isinstance(data, dict):
            raise TypeError(f"_preprocess must return a dict of model inputs, got {type(data).__name__}")
        with torch.no_grad():
            return {key: self.model(value) for key, value in data.items()}
