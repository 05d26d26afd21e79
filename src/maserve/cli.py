"""The command line: `maserve serve` (every flag mirrors a MASERVE_* variable), `maserve config
validate`, `maserve init` and `maserve predict`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import mimetypes
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

from maserve import __version__
from maserve.app import MaserveApp, build_app
from maserve.config import JSON, MULTIPART, ApiSpec, ConfigError, ModelConfig, load_config, read_config
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
        return _predict(args.model_dir, args.input, args.api)
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


class UsageError(ValueError):
    """`maserve predict` cannot build a request from what it was given."""


def _predict(model_dir: Path, given: str, api_url: str | None) -> int:
    """One request through the server's own ASGI app (routing, decoding, model, error replies),
    in this process: print the JSON reply; exit 1 on an error reply, 2 on a unusable command."""
    try:
        settings = Settings.load(overrides={"model_dir": model_dir, "workers": 1})
        config = load_config(model_dir / "config.json")
        api = _pick_api(config, api_url)
        body, content_type = _request_body(api, given)
    except (SettingsError, ConfigError, UsageError) as exc:
        print(f"maserve predict: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("maserve.access").setLevel(logging.ERROR)  # the reply itself is printed
    with contextlib.redirect_stdout(sys.stderr):  # what the service prints must not mix with the reply
        status, reply = asyncio.run(_call(build_app(settings, config), config, api, body, content_type))
    sys.stdout.write(reply.decode("utf-8", "replace") + "\n")
    return 0 if status < 400 else 1


def _pick_api(config: ModelConfig, url: str | None) -> ApiSpec:
    if not config.apis:
        raise UsageError(f"{config.path} declares no apis")
    if url is None:
        return config.apis[0]
    for api in config.apis:
        if api.url == url:
            return api
    raise UsageError(f"no api at {url}; {config.path} declares {', '.join(api.url for api in config.apis)}")


def _request_body(api: ApiSpec, given: str) -> tuple[bytes, str]:
    """The body and Content-Type a client would send: a file is uploaded, JSON is sent as is."""
    path = Path(given)
    is_file = len(given) < 4096 and path.is_file()
    if is_file and path.suffix.lower() != ".json":
        return _upload(api, path)
    if is_file:
        text = path.read_bytes()  # sent unparsed: a broken .json file gets the server's own reply
    else:
        try:
            json.loads(given)
        except json.JSONDecodeError as exc:
            raise UsageError(f"INPUT is neither a file nor JSON ({exc}): {given[:80]!r}") from None
        text = given.encode()
    if api.request_content_type != MULTIPART:
        return text, api.request_content_type
    try:
        values = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{api.method} {api.url} takes {MULTIPART}: INPUT must be a JSON object of fields ({exc})")
    if not isinstance(values, dict):
        raise UsageError(f"{api.method} {api.url} takes {MULTIPART}: INPUT must be a JSON object of fields")
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    return _multipart([], form)


def _upload(api: ApiSpec, path: Path) -> tuple[bytes, str]:
    fields_ = sorted(api.file_fields) if api.request_content_type == MULTIPART else []
    if len(fields_) != 1:
        takes = f"file fields {', '.join(fields_)}" if fields_ else f"no file ({api.request_content_type or JSON})"
        raise UsageError(f"{api.method} {api.url} takes {takes}: give JSON, or pick an api with --api")
    return _multipart([(fields_[0], path.name, path.read_bytes())], {})


def _multipart(files: list[tuple[str, str, bytes]], form: dict[str, str]) -> tuple[bytes, str]:
    """Encode a multipart/form-data body as a browser or curl -F would (RFC 7578)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in form.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    for name, filename, data in files:
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"; filename="{_quote(filename)}"'
            f"\r\nContent-Type: {ctype}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"{MULTIPART}; boundary={boundary}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


async def _call(app: MaserveApp, config: ModelConfig, api: ApiSpec, body: bytes, ctype: str) -> tuple[int, bytes]:
    """Start the app's lifespan, wait until its health url answers 200 (the model loaded and warmed
    up, as the platform waits), send the request, stop the app; return status and body."""
    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    lifespan = asyncio.create_task(app(scope, lifespan_in.get, lifespan_out.put))
    await lifespan_in.put({"type": "lifespan.startup"})
    await lifespan_out.get()
    while (await _http(app, "GET", config.health_url, b"", []))[0] != 200:
        await asyncio.sleep(0.02)
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    reply = await _http(app, api.method, api.url, body, headers)
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await lifespan
    return reply


async def _http(
    app: MaserveApp, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """One ASGI HTTP request to the app: (status, body)."""
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


if __name__ == "__main__":
    sys.exit(main())
