# Test fixture: a PyTorch-style customize_service.py that describes the data it is handed:
# per form field, file name -> size, .name and type of the file object; plain fields as given.
import os

from model_service.pytorch_model_service import PTServingBaseService


class DescribeService(PTServingBaseService):

    def __init__(self, model_name, model_path):
        super(DescribeService, self).__init__(model_name, model_path)
        with open(self.model_path, "rb") as f:
            self.weights = f.read()

    def _preprocess(self, data):
        described = {}
        for k, v in data.items():
            if isinstance(v, dict):
                described[k] = {
                    file_name: {"size": len(file_content.read()), "name": file_content.name,
                                "type": type(file_content).__name__}
                    for file_name, file_content in v.items()
                }
            else:
                described[k] = {"value": v, "type": type(v).__name__}
        return described

    def _inference(self, data):
        return data

    def _postprocess(self, data):
        return {
            "data": data,
            "model_name": self.model_name,
            "model_path": os.path.basename(self.model_path),
            "model_path_is_file": os.path.isfile(self.model_path),
            "weights": self.weights.decode(),
        }
