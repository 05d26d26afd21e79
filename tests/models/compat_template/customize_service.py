# Test fixture: a script behind a config.json written the way the platform's own template and
# samples write it (blank restraint and package_version, typos, a pass-through response
# Content-type, a file field in a JSON request, which the script reads as a plain value).
from model_service.tfserving_model_service import TfServingBaseService


class TemplateService(TfServingBaseService):

    def __init__(self, model_name, model_path):
        self.model_name = model_name
        self.model_path = model_path

    def _preprocess(self, data):
        return {"label": str(data.get("images", "none")), "threshold": data.get("threshold", 0.5)}

    def _inference(self, data):
        data["scores"] = [data["threshold"], 1 - data["threshold"]]
        return data

    def _postprocess(self, data):
        return {"predicted_label": data["label"], "scores": data["scores"]}
