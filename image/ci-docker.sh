#!/bin/sh
# CI's Docker stage (`make docker-check`, run by .ci/run after the podman stage): the same MNIST
# image built offline by `maserve build --engine docker` must pass `maserve check --image`.
#
# These machines have no Docker daemon, so this starts one of its own (Debian's docker.io) with the
# settings they need: vfs storage, no iptables, the default ulimits of image/podman-env.sh, its
# state in a temporary directory that is removed at the end. The base image comes from podman's
# store (`podman save | docker load`), made by the podman stage. Debian's docker CLI (20.10) is
# used: it builds with the daemon's own BuildKit, which the Dockerfile's bind mount needs; a newer
# CLI needs the buildx plugin for that.
set -eu
cd "$(dirname "$0")/.."
maserve=${MASERVE_BIN:-.venv/bin/maserve}
base=${MASERVE_TEST_BASE:-localhost/debian-python:bookworm}
image=maserve-mnist:docker-check
state=$(mktemp -d /tmp/maserve-dockerd.XXXXXX)
PATH=/usr/bin:$PATH  # Debian's docker client before any other (see above)
DOCKER_HOST=unix://$state/docker.sock
export PATH DOCKER_HOST

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

cat > "$state/daemon.json" <<JSON
{"storage-driver": "vfs", "iptables": false, "ip6tables": false,
 "data-root": "$state/root", "exec-root": "$state/exec", "pidfile": "$state/dockerd.pid",
 "hosts": ["$DOCKER_HOST"], "exec-opts": ["native.cgroupdriver=cgroupfs"],
 "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 1024},
                     "nproc": {"Name": "nproc", "Soft": 4096, "Hard": 4096}}}
JSON
stop_daemon() {
    if [ -f "$state/dockerd.pid" ]; then
        kill "$(cat "$state/dockerd.pid")" 2>/dev/null || true
        tries=0
        while [ -f "$state/dockerd.pid" ] && [ "$tries" -lt 30 ]; do sleep 1; tries=$((tries + 1)); done
    fi
    rm -rf "$state"
}
trap stop_daemon EXIT
trap 'exit 1' INT TERM

step "dockerd (state in $state)"
dockerd --config-file "$state/daemon.json" >"$state/dockerd.log" 2>&1 &
tries=0
until docker info >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ]; then echo "dockerd did not start in 60 s:" >&2; tail -n 20 "$state/dockerd.log" >&2; exit 1; fi
    sleep 1
done
docker version --format 'client {{.Client.Version}}, daemon {{.Server.Version}}'

step "base image $base from podman's store"
podman save "$base" | docker load

step "real-time image $image (docker, offline)"
"$maserve" build examples/mnist --offline --engine docker --base-image "$base" --tag "$image"

step "maserve check --image $image --engine docker (5 s grace)"
"$maserve" check --image "$image" --engine docker --config examples/mnist \
    --grace 5 --env MASERVE_GRACE_SECONDS=5 --keepalive-seconds 3
step "docker stage passed"
