# Test fixture: a script that hard-codes the platform's model path, as many published ones do: its
# labels opened as /home/mind/model/labels.txt and the directory put on sys.path by hand. It only
# works where the model package is at /home/mind/model: inside the image (tests/test_check_image.py).
import sys

sys.path.append("/home/mind/model")

from model_service.model_service import SingleNodeService  # noqa: E402

MODEL_DIR = "/home/mind/model"


class HardcodedService(SingleNodeService):

    def __init__(self, model_name, model_path):
        super().__init__(model_name, model_path)
        with open(MODEL_DIR + "/labels.txt") as handle:
            self.labels = handle.read().split()

    def _preprocess(self, data):
        return data["index"]

    def _inference(self, data):
        return self.labels[data]

    def _postprocess(self, data):
        return {"label": data, "model_path": self.model_path}
