"""Test fixture with several apis: answers per route, so each route's own schema can be tested.

The api called is `inputs.url` (set by maserve's decoder; "/" for the warm-up's hand-made Inputs).
"""

from typing import Any

from maserve import Inputs, Model


class MultiService(Model):
    def predict(self, inputs: Inputs) -> dict[str, Any]:
        url = inputs.url
        if url == "/sum":
            if inputs.fields.get("answer_wrong"):
                return {"sum": "not a number"}  # breaks the response schema on purpose
            return {"sum": sum(inputs.fields["numbers"]) * inputs.fields.get("scale", 1)}
        if url == "/upload":
            fields = inputs.fields
            return {
                "size": len(inputs.files["file"].data),
                "fields": fields,
                "types": {name: type(value).__name__ for name, value in fields.items()},
            }
        if url == "/openapi.json":
            return {"custom": True}
        raise AssertionError(f"no api at {url}")
