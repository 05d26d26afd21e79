# Test fixture: a script whose config.json declares no apis, as some shipped without: the
# platform's runtimes still hand it whatever arrives at POST /. Answers what it was given, and a
# label that is not ASCII (the platform's runtimes write such answers as UTF-8 characters).
from model_service.tfserving_model_service import TfServingBaseService


class AnythingService(TfServingBaseService):

    def _preprocess(self, data):
        seen = {}
        for field, value in data.items():
            if isinstance(value, dict) and all(hasattr(f, "getvalue") for f in value.values()):
                seen[field] = {name: len(f.getvalue()) for name, f in value.items()}
            else:
                seen[field] = value
        return seen

    def _inference(self, data):
        return {"got": data, "label": "猫"}

    def _postprocess(self, data):
        return data
