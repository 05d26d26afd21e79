# Test fixture: what scripts for the built-in images rely on besides the pipeline: a sibling module
# imported from the model directory, files opened relative to it (the working directory), uploads
# read with getvalue(), and their own inference() override giving _preprocess another argument;
# no _postprocess (the base's pass-through; the platform never enforces its abstract methods).
import os

from helper_module import PREFIX
from model_service.tfserving_model_service import TfServingBaseService


class ConventionService(TfServingBaseService):

    def inference(self, data):
        return self._postprocess(self._inference(self._preprocess(data, "tagged")))

    def _preprocess(self, data, tag):
        upload = next(iter(data["images"].values()))
        return {"size": len(upload.getvalue()), "tag": tag}

    def _inference(self, data):
        with open("labels.txt") as handle:
            data["labels"] = handle.read().split()
        data["prefix"] = PREFIX
        data["cwd_is_model_dir"] = os.path.isfile("customize_service.py")
        return data
