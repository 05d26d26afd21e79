"""Test fixture: answers the size of the uploaded file; can sleep, load slowly or fail to load."""

import os
import time

from maserve import Inputs, Model


class EchoService(Model):
    def load(self) -> None:
        time.sleep(float(os.environ.get("ECHO_LOAD_SECONDS", "0")))
        if os.environ.get("ECHO_FAIL_LOAD"):
            raise RuntimeError("ECHO_FAIL_LOAD is set")

    def predict(self, inputs: Inputs) -> dict:
        time.sleep(float(inputs.fields.get("sleep", "0")))
        upload = inputs.files["file"]
        return {"size": len(upload.data), "filename": upload.filename, "pid": os.getpid()}
