# -*- coding: utf-8 -*-
# Test fixture: a ModelArts customize_service.py in the platform's PyTorch style, unmodified
# (the model was exported to ONNX; the test copies model.onnx and preprocess.py next to it).
import numpy as np
import onnxruntime as ort
from PIL import Image

from model_service.pytorch_model_service import PTServingBaseService
from preprocess import image_to_tensor


class PTVisionService(PTServingBaseService):

    def __init__(self, model_name, model_path):
        # Call the parent class's constructor
        super(PTVisionService, self).__init__(model_name, model_path)
        # Load the model from model_path (the model file)
        self.model = ort.InferenceSession(self.model_path, providers=["CPUExecutionProvider"])
        self.input_name = self.model.get_inputs()[0].name

    def _preprocess(self, data):
        preprocessed_data = {}
        for k, v in data.items():
            input_batch = []
            for file_name, file_content in v.items():
                image = Image.open(file_content)
                input_batch.append(image_to_tensor(image))
            preprocessed_data[k] = np.concatenate(input_batch)
        return preprocessed_data

    def _inference(self, data):
        (logits,) = self.model.run(None, {self.input_name: data["images"]})
        return logits

    def _postprocess(self, data):
        return {"mnist_result": int(np.argmax(data[0]))}
