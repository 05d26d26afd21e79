#!/bin/sh
# CI's second stage (`make image-check`, run by .ci/run): the real MNIST image, built offline with
# podman on a base made from Debian packages alone, must pass `maserve check --image` with the
# default 60 s grace, and so must an online build (dependencies from the index inside the build); a
# rebuild with one requirement more must install it (not reuse the first build's venv layer from
# the cache); the --batch variant must have java and zip, pass the checks with --batch and run a
# `maserve batch --image` job (tests/test_batch_image.py).
#
# Needs podman (with the settings of image/podman-env.sh on machines like ours: sourced here when
# CONTAINERS_CONF is unset), debootstrap and root for the base image. Leaves the MNIST image
# ($MASERVE_TEST_IMAGE, default maserve-mnist:check) and the base for tests/test_check_image.py;
# the others are removed. `podman system reset -f` empties the store afterwards.
set -eu
cd "$(dirname "$0")/.."
maserve=${MASERVE_BIN:-.venv/bin/maserve}
base=${MASERVE_TEST_BASE:-localhost/debian-python:bookworm}
image=${MASERVE_TEST_IMAGE:-maserve-mnist:check}
batch_image=${image%:*}:batch-check
online_image=${image%:*}:online-check
changed_image=${image%:*}:changed-check
mirror=${MASERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -z "${CONTAINERS_CONF:-}" ]; then . image/podman-env.sh /tmp/maserve-podman; fi

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "base image $base from $mirror"
if podman image exists "$base"; then echo "already there"; else
    "$maserve" base-image --engine podman --tag "$base" --mirror "$mirror"
fi

step "real-time image $image"
"$maserve" build examples/mnist --offline --engine podman --base-image "$base" --tag "$image"
echo "what takes the space (podman history):"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$image" | cut -c1-160
# (the base's own ensurepip wheels, which `python3 -m venv` needs, are not the build's)
echo "no wheels, pip caches or pip from the build left in the image:"
podman run --rm --user 0 --entrypoint sh "$image" -c \
    'found=$(find / -xdev \( -path /usr/share/python-wheels -o -path "*/ensurepip/_bundled" \) -prune \
        -o \( -name "*.whl" -o -path "*/.cache/pip" -o -path "/opt/venv/bin/pip*" \) -print | head -n 20);
     if [ -n "$found" ]; then echo "$found"; exit 1; fi; echo none'

step "maserve check --image $image (default 60 s grace)"
"$maserve" check --image "$image" --engine podman --config examples/mnist

step "a changed requirement rebuilds the venv layer, not reused from the cache: $changed_image"
# The same Dockerfile, arguments and base as $image, one requirement more: a bind mount is not
# part of the build cache's key, so only the COPYed wheels.sha256 tells the engine that wheels/ changed.
changed=$(mktemp -d)
cp -r examples/mnist "$changed/mnist"
echo "six==1.17.0" > "$changed/mnist/requirements.txt"
"$maserve" build "$changed/mnist" --offline --engine podman --base-image "$base" --tag "$changed_image"
podman run --rm --entrypoint /opt/venv/bin/python "$changed_image" -c 'import six; print("six", six.__version__, "installed")'
podman rmi "$changed_image" >/dev/null
rm -rf "$changed"

step "online build (dependencies from the index inside the build) $online_image"
"$maserve" build examples/mnist --engine podman --base-image "$base" --tag "$online_image"
"$maserve" check --image "$online_image" --engine podman --config examples/mnist \
    --grace 5 --env MASERVE_GRACE_SECONDS=5 --keepalive-seconds 3
podman rmi "$online_image" >/dev/null

step "batch image $batch_image"
"$maserve" build examples/mnist --offline --batch --engine podman --base-image "$base" --tag "$batch_image"
podman run --rm --entrypoint sh "$batch_image" -c \
    'for tool in java zip; do command -v "$tool" || { echo "$tool is missing" >&2; exit 1; }; done; java -version 2>&1 | head -n 1'

step "maserve check --image $batch_image --batch (5 s grace)"
"$maserve" check --image "$batch_image" --engine podman --config examples/mnist --batch \
    --grace 5 --env MASERVE_GRACE_SECONDS=5 --keepalive-seconds 3

step "maserve batch --image $batch_image (tests/test_batch_image.py)"
MASERVE_TEST_BATCH_IMAGE="$batch_image" MASERVE_TEST_ENGINE=podman "$(dirname "$maserve")/python" -m pytest -q \
    -p no:cacheprovider tests/test_batch_image.py
podman rmi "$batch_image" >/dev/null
step "image stage passed"
