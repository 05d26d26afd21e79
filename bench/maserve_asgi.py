"""maserve's ASGI app for a plain gunicorn + uvicorn worker (the `maserve-h11` variant of run.py).

    MASERVE_MODEL_DIR=examples/mnist gunicorn -k uvicorn_worker.UvicornH11Worker -w 2 \
        --keep-alive 200 -b 127.0.0.1:8080 --chdir /path/to/repo 'bench.maserve_asgi:create_app()'

This is `maserve.app:create_app()` plus the one thing `maserve serve` does before it and
create_app() does not: `setup_logging`, so the app writes the same one-line-per-request log to
stdout as under `maserve serve`. Without it the maserve loggers have no handler and drop their
INFO lines, and the variant would be measured without the cost of the access log, which is not
what a worker-class comparison should change.
"""

from __future__ import annotations

from maserve.app import MaserveApp
from maserve.app import create_app as _create_app
from maserve.logs import setup_logging
from maserve.settings import Settings


def create_app() -> MaserveApp:
    setup_logging(Settings.load().log_format)
    return _create_app()
