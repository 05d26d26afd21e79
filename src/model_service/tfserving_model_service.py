"""`TfServingBaseService`, the ModelArts base class for TensorFlow inference scripts, as a maserve shim.

Huawei Cloud ModelArts, "Specifications for Writing Model Inference Code": `model_path` is the model
DIRECTORY. The platform's base runs the SavedModel there through TensorFlow Serving, so a script may
define only `_preprocess` (a dict of the serving signature's named inputs) and `_postprocess`.
Here the default `_inference` does the same in process: the SavedModel in the model directory (or
one folder below it) loaded once with `tf.saved_model.load`, its `serving_default` signature
called with the preprocessed dict as named inputs (converted to the declared dtypes), the outputs
as Python lists (`.tolist()`: scripts index them as lists). TensorFlow is imported only then; it
is the model's own dependency (config.json's `dependencies` or requirements.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_service.model_service import SingleNodeService

SIGNATURE = "serving_default"


class TfServingBaseService(SingleNodeService):
    """Base class of a TensorFlow inference script; `self.model_path` is the model directory."""

    def load_default_model(self) -> None:
        """Load the SavedModel now (at start) for the default `_inference`: a missing TensorFlow or
        model stops the server with the reason instead of failing every request."""
        folder = saved_model_dir(Path(self.model_path))
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise ImportError(f"{type(self).__name__} leaves _inference to TfServingBaseService, whose default runs "
                              f"the SavedModel with TensorFlow: install tensorflow (the model's dependencies): {exc}"
                              ) from exc
        self._saved_model = tf.saved_model.load(str(folder))  # kept referenced: the signature needs it
        signatures = self._saved_model.signatures
        if SIGNATURE not in signatures:
            raise ValueError(f"{folder}: the SavedModel has no {SIGNATURE!r} signature (it has: {', '.join(signatures)})")
        self._signature = signatures[SIGNATURE]
        self._input_specs = self._signature.structured_input_signature[1]

    def _inference(self, data: Any) -> Any:
        import tensorflow as tf

        if "_signature" not in self.__dict__:
            self.load_default_model()
        if not isinstance(data, dict):
            raise TypeError(f"_preprocess must return a dict of the signature's inputs, got {type(data).__name__}")
        unknown = set(data) - set(self._input_specs)
        if unknown:
            raise KeyError(f"not inputs of the {SIGNATURE} signature: {', '.join(sorted(unknown))}"
                           f" (it takes: {', '.join(sorted(self._input_specs))})")
        inputs = {name: tf.constant(value, dtype=self._input_specs[name].dtype) for name, value in data.items()}
        outputs = self._signature(**inputs)
        return {name: value.numpy().tolist() for name, value in outputs.items()}


def saved_model_dir(model_dir: Path) -> Path:
    """The folder holding saved_model.pb: the model directory itself, or its one subfolder that has it."""
    if (model_dir / "saved_model.pb").is_file():
        return model_dir
    found = sorted(p.parent for p in model_dir.glob("*/saved_model.pb"))
    if len(found) != 1:
        raise FileNotFoundError(f"{model_dir}: {'no' if not found else 'several'} saved_model.pb for the default "
                                "_inference of TfServingBaseService (override _inference, or keep one SavedModel)")
    return found[0]
