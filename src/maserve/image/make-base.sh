#!/bin/sh
# Build a Debian base image with Python 3 from Debian packages alone (no registry needed).
#   maserve base-image [--engine podman|docker] [--tag TAG] [--mirror MIRROR] [--keep-docs]
#   sh make-base.sh [-e podman|docker] [--keep-docs] [TAG] [MIRROR]      (the same, directly)
# TAG defaults to localhost/debian-python:bookworm, MIRROR to http://deb.debian.org/debian.
# Needs root (debootstrap). With podman, source image/podman-env.sh first on these machines.
#
# The root file system is debootstrap's minbase of bookworm plus python3 and python3-venv.
# Apt caches and lists are removed; unless --keep-docs is given, man pages, docs and
# translations are removed too and a dpkg excludes file (as in debian:*-slim) keeps later
# `apt-get install` steps from adding them back.
set -eu
engine=podman
keep_docs=0
while [ $# -gt 0 ]; do
    case "$1" in
        -e) engine=$2; shift 2 ;;
        --keep-docs) keep_docs=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        -*) echo "make-base.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
tag=${1:-localhost/debian-python:bookworm}
mirror=${2:-http://deb.debian.org/debian}
suite=bookworm

command -v debootstrap >/dev/null 2>&1 || { echo "make-base.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
command -v "$engine" >/dev/null 2>&1 || { echo "make-base.sh: $engine is missing" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "make-base.sh: debootstrap needs root" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/make-base.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
rootfs=$work/rootfs

echo "make-base.sh: debootstrap $suite from $mirror"
# passwd (useradd, groupadd, groupmod) is Priority: required, so minbase has it already;
# naming it makes that explicit and costs nothing.
debootstrap --variant=minbase --include=python3,python3-venv,passwd "$suite" "$rootfs" "$mirror"

for tool in useradd groupadd groupmod; do
    if [ ! -x "$rootfs/usr/sbin/$tool" ]; then
        echo "make-base.sh: /usr/sbin/$tool is missing from the root file system" >&2
        exit 1
    fi
done

# Point apt at the mirror that was used, so images built on this base can apt-get from it.
echo "deb $mirror $suite main" > "$rootfs/etc/apt/sources.list"

# Apt caches and lists (about 60 MB), and debootstrap's leftovers.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/debootstrap
mkdir -p "$rootfs/var/lib/apt/lists/partial"

if [ "$keep_docs" = 0 ]; then
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
# As in the debian:*-slim images: no documentation from later package installs.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
SLIM
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
        "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/locale/*
fi
# The standard library's byte code (about 8 MB, compiled by Debian's postinst) stays: the image
# runs as a user that cannot write it, and without it every start compiles the modules again.

echo "make-base.sh: root file system is $(du -sh "$rootfs" | cut -f1); importing as $tag with $engine"
tar --numeric-owner -C "$rootfs" -cf - . | "$engine" import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$tag"
"$engine" image inspect "$tag" --format '{{.Size}}' | awk -v t="$tag" '{printf "make-base.sh: %s is %.0f MB\n", t, $1/1e6}'
