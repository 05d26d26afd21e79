# Source me (POSIX sh):  . image/podman-env.sh [STATE_DIR]
# Writes the containers.conf and storage.conf that podman/buildah need on these machines
# (runc, cgroupfs, explicit ulimits, vfs storage; see /work/shared/containers/NOTES.md) into
# STATE_DIR (default /tmp/maserve-podman) and exports CONTAINERS_CONF and CONTAINERS_STORAGE_CONF,
# so plain `podman build` / `podman run` work afterwards in this shell.
# Remove the state with `podman system reset -f` then `rm -rf STATE_DIR`.
#
# STATE_DIR must be an absolute path (MASERVE_PODMAN_STATE works too). A sourced file sees the
# caller's positional parameters when given none, so inside a script that has arguments of its
# own, source it with an explicit directory: `. image/podman-env.sh /tmp/maserve-podman`;
# anything else than an absolute path is ignored with a note.
maserve_podman_state=${MASERVE_PODMAN_STATE:-/tmp/maserve-podman}
case "${1:-}" in
    /*) maserve_podman_state=$1 ;;
    "") ;;
    *) echo "podman-env: ignoring '$1': STATE_DIR must be an absolute path; using $maserve_podman_state" >&2 ;;
esac
mkdir -p "$maserve_podman_state/run" "$maserve_podman_state/storage" || return 1 2>/dev/null || exit 1
maserve_podman_state=$(cd "$maserve_podman_state" && pwd)
cat > "$maserve_podman_state/containers.conf" <<MASERVE_EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
MASERVE_EOF
cat > "$maserve_podman_state/storage.conf" <<MASERVE_EOF
[storage]
driver = "vfs"
runroot = "$maserve_podman_state/run"
graphroot = "$maserve_podman_state/storage"
MASERVE_EOF
CONTAINERS_CONF=$maserve_podman_state/containers.conf
CONTAINERS_STORAGE_CONF=$maserve_podman_state/storage.conf
export CONTAINERS_CONF CONTAINERS_STORAGE_CONF
echo "podman-env: CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF" >&2
unset maserve_podman_state
