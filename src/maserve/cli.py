"""The command line: `maserve serve` (every flag mirrors a MASERVE_* variable), `maserve config
validate`, `maserve init`, `maserve predict`, `maserve check`, `maserve batch`, `maserve build`,
`maserve base-image` and `maserve deploy k8s`."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import signal
import subprocess
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
    serve.add_argument("--page-path", metavar="PATH",
                       help="the prediction page, empty: none [MASERVE_PAGE_PATH; /_maserve/]")
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
    _check_parser(commands)
    from maserve.batch import cli as batch_cli

    batch_cli.add_parser(commands)
    _build_parsers(commands)
    from maserve.deploy import cli as deploy_cli

    deploy_cli.add_parser(commands)
    return parser


def _build_parsers(commands: argparse._SubParsersAction) -> None:
    from maserve.build import DEFAULT_BASE, DEFAULT_PYTHON

    build = commands.add_parser("build", help="build the custom image of a model directory (docker or podman)")
    build.add_argument("model_dir", type=Path, metavar="DIR", help="model directory (config.json, service.py, ...)")
    build.add_argument("-t", "--tag", metavar="TAG", help="image name:tag [maserve-<DIR name>:latest]")
    build.add_argument("--engine", choices=("docker", "podman"),
                       help="[docker when `docker info` works, else podman]")
    build.add_argument("--base-image", default=DEFAULT_BASE, metavar="IMAGE",
                       help=f"any image with Python 3.11+ and venv [{DEFAULT_BASE}]")
    build.add_argument("--batch", action="store_true", help="add a headless JRE and zip (batch services)")
    build.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu",
                       help="cuda: GPU wheels (onnxruntime-gpu, CUDA libraries from PyPI) on the same base; "
                            "the driver comes from the host [cpu]")
    build.add_argument("--offline", action="store_true",
                       help="download every wheel on the host; the build uses no package index")
    build.add_argument("--python-version", default=DEFAULT_PYTHON, metavar="X.Y",
                       help=f"the base image's Python, for --offline wheels [{DEFAULT_PYTHON}]")
    build.add_argument("--index-url", default="", metavar="URL",
                       help="package index used inside an online build (recorded in the image history)")
    build.add_argument("--pip-cert", type=Path, metavar="PEM",
                       help="CA bundle for the index inside an online build [the host pip's cert setting]")
    build.add_argument("--network", default="", metavar="MODE",
                       help="network of the build's RUN steps, e.g. host: a mirror on the host's 127.0.0.1 "
                            "[the engine's default]")
    build.add_argument("--context-only", type=Path, metavar="DIR",
                       help="render the build context into DIR and stop (to build it elsewhere)")

    base = commands.add_parser("base-image", help="make a Debian base image with Python from packages alone")
    base.add_argument("-t", "--tag", default="localhost/debian-python:bookworm", metavar="TAG",
                      help="[localhost/debian-python:bookworm]")
    base.add_argument("--mirror", default="http://deb.debian.org/debian", metavar="URL",
                      help="Debian mirror [http://deb.debian.org/debian]")
    base.add_argument("--engine", choices=("docker", "podman"), help="[docker when `docker info` works, else podman]")
    base.add_argument("--keep-docs", action="store_true", help="keep man pages, docs and translations")


def _check_parser(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check", help="run every point of ModelArts' custom-image spec against a service and report"
    )
    check.add_argument("url", nargs="?", metavar="URL", help="a running service, e.g. http://127.0.0.1:8080")
    check.add_argument("--cmd", metavar="COMMAND", help='start the service with sh -c COMMAND, e.g. "sh image/run.sh"')
    check.add_argument(
        "--config", type=Path, metavar="PATH", help="config.json or model directory (samples/ next to it)"
    )
    check.add_argument("--cwd", type=Path, metavar="DIR", help="working directory of --cmd")
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    check.add_argument("--keepalive-seconds", type=float, default=15.0, metavar="N", help="idle time tested [15]")
    check.add_argument("--full", action="store_true", help="test the spec's full 200 s keep-alive")
    check.add_argument("--metrics-path", default="/metrics", metavar="PATH",
                       help="where Prometheus metrics are expected [/metrics]")
    check.add_argument("--grace", type=float, default=60.0, metavar="S", help="the service's grace period [60]")
    check.add_argument("--stop-bound", type=float, default=90.0, metavar="S", help="exit limit after SIGTERM [90]")
    check.add_argument("--port", type=int, default=8080, metavar="P", help="the port ModelArts calls [8080]")
    check.add_argument("--https", action="store_true", help="talk TLS (without verifying the certificate)")
    check.add_argument("--image", metavar="IMAGE", help="run IMAGE with podman/docker and check it, image checks too")
    check.add_argument("--engine", choices=("podman", "docker"), help="--image: engine [docker if `docker info` works, else podman]")
    check.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                       help="--image: environment for the container (repeatable); the image's own env otherwise")
    check.add_argument("--batch", action="store_true", help="--image: a batch service (python, java and zip required)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["batch", "mapping-rule"]:
        from maserve.batch.cli import mapping_rule

        return mapping_rule(argv[2:])
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _validate(args.path, args.json)
    if args.command == "init":
        return _init(args.name, args.dir)
    if args.command == "predict":
        return local.predict(args.model_dir, args.input, args.api)
    if args.command == "check":
        return _check(args)
    if args.command == "batch":
        from maserve.batch.cli import main as batch_main

        return batch_main(args)
    if args.command == "build":
        return _build(args)
    if args.command == "base-image":
        return _base_image(args)
    if args.command == "deploy":
        from maserve.deploy.cli import main as deploy_main

        return deploy_main(args)
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


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when no check FAILs, 1 otherwise, 2 on a usage error."""
    from maserve.check import Options, run
    from maserve.check.report import as_json, as_table

    if sum(x is not None for x in (args.url, args.cmd, args.image)) != 1:
        print("maserve check: give either URL, --cmd COMMAND or --image IMAGE (one of them)", file=sys.stderr)
        return 2
    if args.image is None and (args.env or args.engine or args.batch):
        print("maserve check: --env, --engine and --batch go with --image", file=sys.stderr)
        return 2
    if any("=" not in item or item.startswith("=") for item in args.env):
        print("maserve check: --env takes KEY=VALUE", file=sys.stderr)
        return 2
    if args.config is not None and not args.config.exists():
        print(f"maserve check: --config {args.config}: not found", file=sys.stderr)
        return 2
    if args.cwd is not None and not args.cwd.is_dir():
        print(f"maserve check: --cwd {args.cwd}: not a directory", file=sys.stderr)
        return 2
    if min(args.keepalive_seconds, args.grace, args.stop_bound) < 0 or not 0 < args.port < 65536:
        print("maserve check: times must be >= 0 and the port in 1-65535", file=sys.stderr)
        return 2
    options = Options(
        url=args.url,
        cmd=args.cmd,
        config=args.config,
        cwd=args.cwd,
        port=args.port,
        https=args.https,
        keepalive_seconds=200.0 if args.full else args.keepalive_seconds,
        metrics_path=args.metrics_path,
        grace=args.grace,
        stop_bound=args.stop_bound,
        image=args.image,
        engine=args.engine,
        env=tuple(args.env),
        batch=args.batch,
    )
    # SIGTERM ends the checker through `finally`, so the command it started is killed, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(options)
    print(as_json(results) if args.json else as_table(results))
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


def _build(args: argparse.Namespace) -> int:
    """Exit 0 with the image built (or the context rendered), 1 when the build fails, 2 on usage."""
    from maserve.build import BuildError, BuildOptions, build, default_tag

    if not args.model_dir.is_dir():
        print(f"maserve build: {args.model_dir}: not a directory", file=sys.stderr)
        return 2
    if args.offline and args.index_url:
        print("maserve build: --index-url is for online builds; --offline uses the host's pip settings",
              file=sys.stderr)
        return 2
    if args.pip_cert is not None and (args.offline or not args.pip_cert.is_file()):
        print(f"maserve build: --pip-cert {args.pip_cert}: a CA bundle file, for online builds", file=sys.stderr)
        return 2
    if not re.fullmatch(r"3\.1[1-9]|3\.[2-9][0-9]", args.python_version):
        print(f"maserve build: --python-version {args.python_version}: want 3.11 or newer, as X.Y", file=sys.stderr)
        return 2
    options = BuildOptions(
        model_dir=args.model_dir,
        tag=args.tag or default_tag(args.model_dir),
        engine=args.engine,
        base_image=args.base_image,
        batch=args.batch,
        offline=args.offline,
        python_version=args.python_version,
        index_url=args.index_url,
        pip_cert=args.pip_cert,
        network=args.network,
        context_dir=args.context_only,
        accelerator=args.accelerator,
    )
    try:
        build(options, say=lambda message: print(f"maserve build: {message}", flush=True))
    except BuildError as exc:
        print(f"maserve build: {exc}", file=sys.stderr)
        return 1
    return 0


def _base_image(args: argparse.Namespace) -> int:
    """Run the packaged make-base.sh (debootstrap, needs root) and pass its exit status on."""
    from importlib import resources

    from maserve.check.image import default_engine

    engine = args.engine or default_engine()
    with resources.as_file(resources.files("maserve") / "image" / "make-base.sh") as script:
        command = ["sh", str(script), "-e", engine, *(["--keep-docs"] if args.keep_docs else []), args.tag, args.mirror]
        return subprocess.run(command, check=False).returncode


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
