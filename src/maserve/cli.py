"""`maserve serve`: the command line; every flag mirrors a MASERVE_* environment variable."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from maserve import __version__
from maserve.app import build_app
from maserve.config import ConfigError, load_config
from maserve.logs import setup_logging
from maserve.settings import Settings, SettingsError

log = logging.getLogger("maserve.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maserve", description="Serve a model as a ModelArts custom image.")
    parser.add_argument("--version", action="version", version=f"maserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model directory (config.json + service.py + model files)")
    serve.add_argument("model_dir_arg", nargs="?", metavar="MODEL_DIR", type=Path, help="model directory")
    serve.add_argument("--model-dir", type=Path, help="model directory [MASERVE_MODEL_DIR; default /home/mind/model]")
    serve.add_argument("--host", help="listen address [MASERVE_HOST; default 0.0.0.0]")
    serve.add_argument("--port", type=int, help="listen port [MASERVE_PORT; default 8080]")
    serve.add_argument("--workers", type=int, help="worker processes [MASERVE_WORKERS; default: cores]")
    serve.add_argument("--grace-seconds", type=float, help="serve on after SIGTERM [MASERVE_GRACE_SECONDS; 60]")
    serve.add_argument("--drain-seconds", type=float, help="in-flight limit after grace [MASERVE_DRAIN_SECONDS; 29]")
    serve.add_argument("--keepalive-seconds", type=int, help="idle keep-alive [MASERVE_KEEPALIVE_SECONDS; 200]")
    serve.add_argument("--max-body-bytes", type=int, help="413 above this [MASERVE_MAX_BODY_BYTES; 12 MiB]")
    serve.add_argument(
        "--request-timeout-seconds", type=float, help="504 past this [MASERVE_REQUEST_TIMEOUT_SECONDS; 60]"
    )
    serve.add_argument("--log-format", choices=["json", "text"], help="[MASERVE_LOG_FORMAT; json]")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate for https [MASERVE_TLS_CERT]")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for https [MASERVE_TLS_KEY]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2  # pragma: no cover - argparse enforces the command


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "model_dir_arg")}
    overrides["model_dir"] = args.model_dir_arg or args.model_dir
    try:
        settings = Settings.load(overrides=overrides)
        setup_logging(settings.log_format)
        assert settings.model_dir is not None
        config = load_config(settings.model_dir / "config.json")
    except (SettingsError, ConfigError) as exc:
        logging.basicConfig(stream=sys.stdout, format="%(message)s")
        logging.getLogger("maserve.cli").error(f"maserve: refusing to start: {exc}")
        return 2
    from maserve.server import serve  # gunicorn is only needed to serve

    serve(settings, config, build_app(settings, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
