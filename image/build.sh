#!/bin/sh
# Build the image of a model directory with podman or docker, without a package index inside the build.
#   image/build.sh [-t TAG] [-m MODEL_DIR] [-f MODEL_FILE]... [-e podman|docker] [-b BASE_IMAGE] [--batch]
#     -t TAG         image tag (default maserve-mnist:latest)
#     -m MODEL_DIR   model directory: config.json, service.py, model files (default examples/mnist)
#     -f MODEL_FILE  also put MODEL_FILE into the image's model directory (repeatable), e.g. a
#                    stand-in model.onnx; only the temporary build context gets it, not MODEL_DIR
#     -e ENGINE      podman or docker (default: docker if a daemon answers, else podman)
#     -b BASE_IMAGE  any image with Python 3.11 and venv, e.g. localhost/debian-python:bookworm
#                    made by image/make-base.sh (default python:3.11-slim)
#     --batch        add a headless JRE and zip (ModelArts batch services); apt-get runs in the build
# Wheels are downloaded on the host (pip download for manylinux x86_64 and CPython 3.11) and reach
# the build through a bind mount, so they never land in a layer. PYTHON names the host's Python
# (default: python3 if it has pip, else .venv/bin/python). With podman on these machines, source
# image/podman-env.sh first.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
tag=maserve-mnist:latest
model_dir=$root/examples/mnist
model_files=""
engine=""
base=""
batch=0
while [ $# -gt 0 ]; do
    case "$1" in
        -t) tag=$2; shift 2 ;;
        -m) model_dir=$2; shift 2 ;;
        -f) [ -f "$2" ] || { echo "build.sh: $2 is not a file" >&2; exit 2; }
            model_files="$model_files
$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
        -e) engine=$2; shift 2 ;;
        -b) base=$2; shift 2 ;;
        --batch) batch=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -f "$model_dir/config.json" ] || { echo "build.sh: $model_dir has no config.json" >&2; exit 2; }
if [ -z "$engine" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif python3 -m pip --version >/dev/null 2>&1; then
    python=python3
elif [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
else
    echo "build.sh: no Python with pip on the host (set PYTHON)" >&2; exit 1
fi
ctx=$(mktemp -d "${TMPDIR:-/tmp}/maserve-build.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
trap 'exit 130' INT TERM

echo "build.sh: preparing the context in $ctx"
mkdir -p "$ctx/wheels" "$ctx/model" "$ctx/src"
# Build maserve's wheel from a copy of the sources, so the repository gets no build/ or egg-info.
(cd "$root" && tar --exclude='__pycache__' --exclude='*.egg-info' -cf - pyproject.toml README.md src) \
    | tar -C "$ctx/src" -xf -
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$ctx/wheels" "$ctx/src"
rm -rf "$ctx/src"
# Every manylinux tag a glibc 2.36 system (Debian bookworm, python:3.11-slim) accepts: pip does
# not widen manylinux_2_x tags by itself.
platforms="--platform manylinux2014_x86_64"
v=17; while [ $v -le 36 ]; do platforms="$platforms --platform manylinux_2_${v}_x86_64"; v=$((v + 1)); done
# shellcheck disable=SC2086
"$python" -m pip download --quiet --dest "$ctx/wheels" --only-binary=:all: $platforms \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "$ctx"/wheels/maserve-*.whl
echo "build.sh: $(ls "$ctx/wheels" | wc -l) wheels, $(du -sh "$ctx/wheels" | cut -f1) (bind-mounted, not copied)"
cp "$here/Dockerfile" "$here/run.sh" "$ctx/"
# The model directory without caches or training-only files, plus the -f files.
(cd "$model_dir" && tar --exclude='__pycache__' --exclude='*.pyc' --exclude='train.py' --exclude='samples' -cf - .) \
    | tar -C "$ctx/model" -xf -
printf '%s\n' "$model_files" | while IFS= read -r f; do
    [ -n "$f" ] || continue
    echo "build.sh: adding $f to the context's model directory"
    cp "$f" "$ctx/model/"
done
printf '%s\n' '*' '!Dockerfile' '!run.sh' '!model' '!wheels' > "$ctx/.dockerignore"

set -- --build-arg "BATCH=$batch" -t "$tag" -f "$ctx/Dockerfile"
[ -n "$base" ] && set -- "$@" --build-arg "BASE_IMAGE=$base"
case "$engine" in
    # Docker-format manifests (what SWR and `docker pull` expect); podman keeps layers by default.
    podman|buildah) set -- "$@" --format docker ;;
    # RUN --mount needs BuildKit.
    docker) DOCKER_BUILDKIT=1; export DOCKER_BUILDKIT ;;
esac
echo "build.sh: $engine build $*"
start=$(date +%s)
if [ "$engine" = buildah ]; then "$engine" build --layers "$@" "$ctx"; else "$engine" build "$@" "$ctx"; fi
echo "build.sh: built in $(( $(date +%s) - start )) s"
"$engine" image inspect "$tag" --format '{{.Size}}' | awk -v t="$tag" '{printf "build.sh: %s is %.0f MB\n", t, $1/1e6}'
