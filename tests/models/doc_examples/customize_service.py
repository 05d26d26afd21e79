# Test fixture: a platform-style script for ModelArts' published configuration examples. The test
# puts one example's config.json in the model directory, with the example's documented answer
# (answer.json) and, for a JSON api, its documented request (expected_request.json). The script
# answers the documented answer only when it was handed exactly the documented request (or, for an
# upload api, an uploaded file), so a server that altered either on the way fails the test.
import json
import os

from model_service.tfserving_model_service import TfServingBaseService


class DocumentedExchange(TfServingBaseService):

    def __init__(self, model_name, model_path):
        super(DocumentedExchange, self).__init__(model_name, model_path)
        with open(os.path.join(model_path, "answer.json"), encoding="utf-8") as f:
            self.answer = json.load(f)
        expected = os.path.join(model_path, "expected_request.json")
        self.expected = None
        if os.path.exists(expected):
            with open(expected, encoding="utf-8") as f:
                self.expected = json.load(f)

    def _preprocess(self, data):
        if self.expected is not None:
            if data != self.expected:
                raise ValueError("not the documented request: %r" % (data,))
            return data
        uploads = data.get("images")
        if not isinstance(uploads, dict) or not all(len(f.getvalue()) for f in uploads.values()):
            raise ValueError("no uploaded image in 'images'")
        return data

    def _inference(self, data):
        return self.answer

    def _postprocess(self, data):
        return data
