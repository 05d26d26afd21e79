"""Test fixture: the api of ModelArts' documented csv mapping example, verbatim (multipart request
holding a JSON `data` field); answers the fields it received, so a test sees the exact body."""

from maserve import Inputs, Model


class BatchForm(Model):
    def predict(self, inputs: Inputs) -> dict:
        return inputs.fields
