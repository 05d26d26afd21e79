# Test fixture: a ModelArts customize_service.py in the platform's TensorFlow style, taking JSON.
# Answers the sum of "numbers", the body it was given and what it was constructed with.
import os

from model_service.tfserving_model_service import TfServingBaseService


class SumService(TfServingBaseService):

    def __init__(self, model_name, model_path):
        super(SumService, self).__init__(model_name, model_path)
        self.scale = 1  # a TensorFlow script would load the SavedModel under model_path here

    def _preprocess(self, data):
        numbers = data["numbers"]  # KeyError when absent: the caller's mistake
        if not isinstance(numbers, list) or not all(isinstance(n, (int, float)) for n in numbers):
            raise ValueError("'numbers' must be a list of numbers")
        return {"numbers": numbers, "body": data}

    def _inference(self, data):
        if data["body"].get("fail"):
            raise RuntimeError("asked to fail")
        data["sum"] = sum(data["numbers"]) * self.scale
        return data

    def _postprocess(self, data):
        return {
            "sum": data["sum"],
            "body": data["body"],
            "model_name": self.model_name,
            "model_path": os.path.basename(self.model_path),
            "model_path_is_dir": os.path.isdir(self.model_path),
        }
