"""Test fixture: allocates `megabytes` MiB (touching every page), optionally sleeps, and answers
its pid, with `answer_bytes` of padding for tests of clients that do not read."""

import logging
import os
import time
from typing import Any

from maserve import Inputs, Model


class HogService(Model):
    def predict(self, inputs: Inputs) -> dict[str, Any]:
        if inputs.fields.get("log"):
            logging.getLogger("hog").warning("the model logs from its thread")
        held = [bytearray(1 << 20) for _ in range(inputs.fields["megabytes"])]  # zero-filled: pages touched
        time.sleep(inputs.fields.get("sleep", 0))
        return {"allocated": len(held), "pid": os.getpid(), "padding": "x" * inputs.fields.get("answer_bytes", 0)}
