# Test fixture: a TensorFlow script in the platform's style that defines only _preprocess and
# _postprocess: the base runs the SavedModel (built by the test) through its serving signature.
from model_service.tfserving_model_service import TfServingBaseService


class TinyTfService(TfServingBaseService):

    def _preprocess(self, data):
        return {"x": data["rows"], "k": data["ks"]}

    def _postprocess(self, data):
        return {"doubled": data["doubled"], "sums": data["sum"], "first_k": data["k1"][0]}
