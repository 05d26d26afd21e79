"""Test fixture: sums numbers, batched (prepare + predict_batch); 1e308 + 1e308 overflows to
Infinity, which maserve must never write as JSON."""

import time
from typing import Any

from maserve import Inputs, Model


class SumsService(Model):
    def prepare(self, inputs: Inputs) -> dict[str, Any]:
        return inputs.fields

    def predict_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        time.sleep(max((item.get("sleep", 0) for item in items), default=0))
        return [{"sum": sum(item["numbers"]), "batch": len(items)} for item in items]

    def predict(self, inputs: Inputs) -> dict[str, Any]:
        return self.predict_batch([self.prepare(inputs)])[0]
