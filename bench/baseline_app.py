"""Baseline for the benchmark: the recipe the ModelArts custom-image spec suggests.

A plain Flask app served by gunicorn with gevent workers:

    gunicorn -k gevent --keep-alive 200 -w 2 -b 127.0.0.1:8080 --chdir /path/to/repo bench.baseline_app:app

It serves the same model with the same preprocessing as maserve, written the idiomatic Flask way
(no artificial slowness): the ONNX session is created once per worker (gunicorn imports this
module in each worker after the fork, as there is no --preload), with one intra-op thread.

Environment:
    BASELINE_MODEL_DIR  folder holding model.onnx and preprocess.py (default: examples/mnist of this repo)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image, UnidentifiedImageError

from bench.mnist_model import INPUT_NAME, OUTPUT_NAME, REPO
from bench import mnist_model

MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", REPO / "examples" / "mnist")).resolve()
# Another model folder (examples/resnet) is served through its own service.py, as the peers serve
# it (bench/peers/workload.py): decode + preprocess + one onnxruntime call per request.
MNIST = (MODEL_DIR / "preprocess.py").is_file()
if MNIST:
    preprocess, session = mnist_model.load(MODEL_DIR)
else:
    from bench.peers.workload import Workload

    workload = Workload(MODEL_DIR).load()

app = Flask(__name__)


@app.get("/health")
def health():
    return jsonify(health="true")


@app.post("/")
def predict():
    upload = request.files.get("images")
    if upload is None:
        return jsonify(error="multipart/form-data field 'images' (a file) is required"), 400
    if not MNIST:
        try:
            return jsonify(workload.predict_one(upload.read(), upload.filename or "upload"))
        except Exception as exc:  # the service's InvalidInput (a bad upload)
            return jsonify(workload.error_body(exc)), getattr(exc, "status", 500)
    try:
        image = Image.open(upload.stream)
        image.load()
        tensor = preprocess.image_to_tensor(image)
    except preprocess.NoDigitError as exc:
        return jsonify(error=str(exc)), 400
    except (UnidentifiedImageError, OSError, ValueError):
        return jsonify(error="'images' is not a readable image"), 400
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: tensor})[0]
    return jsonify(mnist_result=int(np.argmax(logits[0])))
