#!/bin/sh
# ModelArts boot file, installed as /home/run.sh and started by CMD ["sh", "/home/run.sh"].
# POSIX sh: Debian images run it with dash.
#
# The server replaces this shell (exec), so the stop signal ModelArts sends to PID 1 reaches the
# gunicorn master directly. The master logs it, keeps serving for MASERVE_GRACE_SECONDS (60),
# stops accepting, lets accepted requests finish (up to MASERVE_DRAIN_SECONDS) and exits 0;
# if the server dies on its own, the container exits with its non-zero status at once.
# The model directory is MASERVE_MODEL_DIR, else /home/mind/model (maserve's own default).
set -eu

PYTHONUNBUFFERED=1
export PYTHONUNBUFFERED

exec "${MASERVE_BIN:-maserve}" serve "$@"
