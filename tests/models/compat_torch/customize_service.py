# Test fixture: a PyTorch script in the platform's style that defines only _preprocess and
# _postprocess: the base calls the model (model.pt, TorchScript, built by the test) on each value.
import torch

from model_service.pytorch_model_service import PTServingBaseService


class TinyTorchService(PTServingBaseService):

    def _preprocess(self, data):
        return {"rows": torch.tensor(data["rows"], dtype=torch.float32)}

    def _postprocess(self, data):
        return {"scores": data["rows"].tolist(), "best": data["rows"].argmax(dim=1).tolist()}
