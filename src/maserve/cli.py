"""The command line: `maserve serve` (every flag mirrors a MASERVE_* variable), `maserve config
validate`, `maserve init` and `maserve predict`."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from maserve import __version__
from maserve.app import build_app
from maserve.config import ConfigError, load_config, read_config
from maserve import local
from maserve.logs import fields, setup_logging
from maserve.scaffold import ScaffoldError, scaffold
from maserve.settings import Settings, SettingsError
from maserve.validate import ERROR, WARNING, Finding, validate_config

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
    serve.add_argument(
        "--validate-responses",
        action="store_true",
        default=None,
        help="500 when an answer breaks the response schema [MASERVE_VALIDATE_RESPONSES; off]",
    )

    config = commands.add_parser("config", help="check a model's config.json")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check config.json against ModelArts' rules")
    validate.add_argument("path", type=Path, metavar="PATH", help="a config.json or a model directory")
    validate.add_argument("--json", action="store_true", help="print the findings as JSON")

    init = commands.add_parser("init", help="create a working model directory NAME to start from")
    init.add_argument("name", metavar="NAME", help="directory name, also the model_algorithm when valid")
    init.add_argument("--dir", type=Path, default=Path("."), metavar="PARENT", help="where to create NAME [.]")

    predict = commands.add_parser("predict", help="run one request through a model in process, no server")
    predict.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model directory")
    predict.add_argument("input", metavar="INPUT", help="a JSON string, a .json file, or a file to upload")
    predict.add_argument("--api", metavar="URL", help="the apis[].url to call [the first api]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _validate(args.path, args.json)
    if args.command == "init":
        return _init(args.name, args.dir)
    if args.command == "predict":
        return local.predict(args.model_dir, args.input, args.api)
    return 2  # pragma: no cover - argparse enforces the command


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "model_dir_arg")}
    overrides["model_dir"] = args.model_dir_arg or args.model_dir
    try:
        settings = Settings.load(overrides=overrides)
        setup_logging(settings.log_format)
        assert settings.model_dir is not None
        config = load_config(settings.model_dir / "config.json")
        app = build_app(settings, config)  # compiles the request and response schemas
    except (SettingsError, ConfigError) as exc:
        logging.basicConfig(stream=sys.stdout, format="%(message)s")
        logging.getLogger("maserve.cli").error(f"maserve: refusing to start: {exc}")
        return 2
    for warning in config.warnings:
        log.warning(f"config.json {warning.path}: {warning.message}", extra=fields(path=warning.path))
    from maserve.server import serve  # gunicorn is only needed to serve

    serve(settings, config, app)
    return 0


def _validate(path: Path, as_json: bool) -> int:
    """Print every finding, then a summary; non-zero exit on any error (warnings alone pass)."""
    config_path = path / "config.json" if path.is_dir() else path
    try:
        findings = validate_config(read_config(config_path))
    except ConfigError as exc:
        findings = [Finding(ERROR, "$", str(exc).removeprefix(f"{config_path}: "))]
    errors = sum(f.level == ERROR for f in findings)
    if as_json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding)
        warnings = sum(f.level == WARNING for f in findings)
        verdict = "invalid" if errors else "valid"
        print(f"{config_path}: {verdict}, {_count(errors, 'error')}, {_count(warnings, 'warning')}")
    return 1 if errors else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _init(name: str, parent: Path) -> int:
    try:
        target = scaffold(name, parent)
    except (ScaffoldError, OSError) as exc:
        print(f"maserve init: {exc}", file=sys.stderr)
        return 1
    example = shlex.quote('{"inputs": [1, 2]}')
    print(f"created {target}/ (config.json, service.py, README.md)")
    print(f"try: maserve predict {shlex.quote(str(target))} {example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
