"""`XgSklServingBaseService`, the older ModelArts base for scikit-learn/XGBoost scripts, as a maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": `model_path` is the model
FILE. maserve passes the single `.m`, `.pkl`, `.pickle`, `.joblib`, `.model` or `.onnx` file of the
model directory (an error at start if there is none or several). That runtime's conventions, kept:
- the constructor may take `model_path` alone (`__init__(self, model_path)`);
- a JSON request reaches `_preprocess` as the body's text (scripts `json.loads(data)` themselves);
- the default `_inference` loads the model file (joblib, else pickle; XGBoost's Booster for `.model`,
  `.json`, `.ubj`) and calls its `predict` on what `_preprocess` returned, the result as Python
  lists (`.tolist()`), so a script may define only `_preprocess` and `_postprocess`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

from model_service.model_service import SingleNodeService

XGBOOST_SUFFIXES = (".model", ".json", ".ubj")


class XgSklServingBaseService(SingleNodeService):
    """Base class of a scikit-learn/XGBoost inference script; `self.model_path` is the model file."""

    model_file_extensions: ClassVar[tuple[str, ...]] = (".m", ".pkl", ".pickle", ".joblib", ".model", ".onnx")
    raw_json_body: ClassVar[bool] = True  # maserve.compat hands a JSON request over as its text

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) + len(kwargs) == 1:  # the one-argument form: model_path alone
            model_path = str(kwargs.get("model_path", args[0] if args else ""))
            super().__init__(Path(model_path).stem, model_path)
        else:
            super().__init__(*args, **kwargs)

    def load_default_model(self) -> None:
        """Load the model file now (at start) for the default `_inference`."""
        self._default_model = load_model_file(Path(self.model_path))

    def _inference(self, data: Any) -> Any:
        if "_default_model" not in self.__dict__:
            self.load_default_model()
        model = self._default_model
        if Path(self.model_path).suffix.lower() in XGBOOST_SUFFIXES:
            import xgboost

            data = xgboost.DMatrix(data)
        result = model.predict(data)
        return result.tolist() if hasattr(result, "tolist") else result


def load_model_file(path: Path) -> Any:
    """The model object in `path`, as that runtime loads it; frameworks imported only when needed."""
    suffix = path.suffix.lower()
    if suffix in XGBOOST_SUFFIXES:
        import xgboost

        return xgboost.Booster(model_file=str(path))
    if suffix == ".onnx":
        raise NotImplementedError(f"{path.name}: override _inference to run an ONNX model (maserve.onnx.onnx_session)")
    try:
        import joblib
    except ImportError:
        joblib = None
    if joblib is not None:
        return joblib.load(path)
    with open(path, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - the model's own file, as the platform loads it
