"""Test fixture: sums numbers, batched (prepare + predict_batch); 1e308 + 1e308 overflows to
Infinity, which maserve must never write as JSON. `log`: prepare and predict_batch log a line
(naming the request by its first number), for the trace-id tests."""

import logging
import time
from typing import Any

from maserve import Inputs, Model


class SumsService(Model):
    def prepare(self, inputs: Inputs) -> dict[str, Any]:
        if inputs.fields.get("log"):
            logging.getLogger("sums").warning("sums prepares %s", inputs.fields["numbers"][0])
        return inputs.fields

    def predict_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(item.get("log") for item in items):
            logging.getLogger("sums").warning("sums predicts a batch of %d", len(items))
        time.sleep(max((item.get("sleep", 0) for item in items), default=0))
        return [{"sum": sum(item["numbers"]), "batch": len(items)} for item in items]

    def predict(self, inputs: Inputs) -> dict[str, Any]:
        return self.predict_batch([self.prepare(inputs)])[0]
