"""Test fixture for `maserve batch` file jobs: answers the upload's name and SHA-256, so a result
file can be checked against its input. By file name: `flaky*` answers 503 the first time (a marker
file in $BATCH_FLAKY_DIR, shared by the workers), `fail*` answers 400, and every request sleeps
$BATCH_SLEEP_SECONDS (for killing a run midway)."""

import hashlib
import os
import time
from pathlib import Path

from maserve import InvalidInput, Inputs, Model
from maserve.errors import ModelNotReady


class BatchFiles(Model):
    def predict(self, inputs: Inputs) -> dict:
        time.sleep(float(os.environ.get("BATCH_SLEEP_SECONDS", "0")))
        if not inputs.files:
            return {"fields": inputs.fields}
        upload = next(iter(inputs.files.values()))
        if upload.filename.startswith("fail"):
            raise InvalidInput(f"{upload.filename} asked to fail")
        if upload.filename.startswith("flaky"):
            marker = Path(os.environ["BATCH_FLAKY_DIR"]) / upload.filename
            try:
                marker.touch(exist_ok=False)
                raise ModelNotReady("flaky: try again")
            except FileExistsError:
                pass
        return {"name": upload.filename, "sha256": hashlib.sha256(upload.data).hexdigest(), "pid": os.getpid()}
