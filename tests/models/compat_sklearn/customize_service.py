# Test fixture: a scikit-learn-style customize_service.py; the "model" is a pickled linear model
# ({"weights": [...], "bias": b}) the test writes as model.pkl.
import json
import os
import pickle

from model_service.python_model_service import XgSklServingBaseService


class LinearService(XgSklServingBaseService):

    def __init__(self, model_name, model_path):
        super(LinearService, self).__init__(model_name, model_path)
        with open(self.model_path, "rb") as f:
            self.model = pickle.load(f)

    def _preprocess(self, data):
        rows = json.loads(data)["req_data"]  # that runtime hands a JSON request over as its text
        return [[float(x) for x in row] for row in rows]

    def _inference(self, data):
        w, b = self.model["weights"], self.model["bias"]
        return [sum(wi * xi for wi, xi in zip(w, row)) + b for row in data]

    def _postprocess(self, data):
        return {"resp_data": data, "model_path": os.path.basename(self.model_path)}
