# Test fixture: a script that uses the platform's helper modules, as scripts for the built-in
# images do: `import log`, `from model_service import log`, `import model_service.log`, and the
# MetricsManager latency pattern. Answers the sum of "numbers" and how often its metric was updated.
import time

import log
import model_service.log as log3
from metric.metrics_manager import MetricsManager
from model_service import log as log2
from model_service.tfserving_model_service import TfServingBaseService

logger = log.getLogger(__name__)


class HelperService(TfServingBaseService):

    def _preprocess(self, data):
        self.started = time.time()
        log2.getLogger("helpers.pre").info("preprocess got %d numbers", len(data["numbers"]))
        return data

    def _inference(self, data):
        data["sum"] = sum(data["numbers"])
        name = self.model_name + "_LatencyInference"
        if name in MetricsManager.metrics:
            MetricsManager.metrics[name].update((time.time() - self.started) * 1000)
        log3.getLogger("helpers.infer").warning("inference done")
        return data

    def _postprocess(self, data):
        logger.info("answering %s", data["sum"])
        return {"sum": data["sum"], "updates": MetricsManager.metrics[self.model_name + "_LatencyInference"].count}
