"""A typical Starlette service for the benchmark: the same model, request and answer as maserve.

    gunicorn -k uvicorn_worker.UvicornWorker --keep-alive 200 -w 2 -b 127.0.0.1:8080 \
        --chdir /path/to/repo bench.starlette_app:app

Written the way a Starlette service usually is (no artificial slowness): `await request.form()`
parses the multipart body (python-multipart), and the blocking part (image decode, preprocessing,
inference) runs in Starlette's thread pool through `run_in_threadpool`, so the event loop stays
free. The ONNX session is created once per worker (gunicorn imports this module in each worker
after the fork, as there is no --preload), with one intra-op thread, as in baseline_app.py.

Environment:
    STARLETTE_MODEL_DIR  folder holding model.onnx and preprocess.py (default: examples/mnist of this repo)
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.mnist_model import INPUT_NAME, OUTPUT_NAME, REPO
from bench import mnist_model

MODEL_DIR = Path(os.environ.get("STARLETTE_MODEL_DIR", REPO / "examples" / "mnist")).resolve()
preprocess, session = mnist_model.load(MODEL_DIR)


class BadImage(ValueError):
    pass


def _predict(data: bytes) -> int:
    """Decode, preprocess and run the model (blocking: called in the thread pool)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        tensor = preprocess.image_to_tensor(image)
    except preprocess.NoDigitError as exc:
        raise BadImage(str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadImage("'images' is not a readable image") from None
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: tensor})[0]
    return int(np.argmax(logits[0]))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"health": "true"})


async def predict(request: Request) -> JSONResponse:
    async with request.form() as form:
        upload = form.get("images")
        if not isinstance(upload, UploadFile):
            return JSONResponse({"error": "multipart/form-data field 'images' (a file) is required"}, status_code=400)
        data = await upload.read()
    try:
        digit = await run_in_threadpool(_predict, data)
    except BadImage as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"mnist_result": digit})


app = Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/", predict, methods=["POST"])])
