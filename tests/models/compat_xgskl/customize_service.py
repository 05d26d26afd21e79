# Test fixture: an XgSklServingBaseService script in that runtime's style: the one-argument
# constructor, the JSON body arriving as text (json.loads here), no _inference (the base loads the
# model file, model.m, and calls its predict), the answer indexed as a list.
import json

from model_service.python_model_service import XgSklServingBaseService


class RowService(XgSklServingBaseService):

    def __init__(self, model_path):
        super(RowService, self).__init__(model_path)
        self.seen_path = model_path

    def _preprocess(self, data):
        self.was_text = isinstance(data, str)
        return json.loads(data)["rows"]

    def _postprocess(self, data):
        return {"first": data[0], "all": data, "body_was_text": self.was_text, "model": self.seen_path[-7:]}
