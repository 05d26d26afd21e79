"""`maserve predict`: one request through a model directory's app, in this process, no server.

The request goes through the server's own ASGI app (routing, decoding, the model, error replies),
so what it prints is what a client of the served model would get.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from maserve.app import MaserveApp, build_app
from maserve.config import (
    JSON,
    MULTIPART,
    ApiSpec,
    ConfigError,
    ModelConfig,
    load_config,
)
from maserve.multipart import encode_multipart
from maserve.settings import Settings, SettingsError


class UsageError(ValueError):
    """`maserve predict` cannot build a request from what it was given."""


def predict(model_dir: Path, given: str, api_url: str | None) -> int:
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
    return encode_multipart([], form)


def _upload(api: ApiSpec, path: Path) -> tuple[bytes, str]:
    fields_ = sorted(api.file_fields) if api.request_content_type == MULTIPART else []
    if len(fields_) != 1:
        takes = f"file fields {', '.join(fields_)}" if fields_ else f"no file ({api.request_content_type or JSON})"
        raise UsageError(f"{api.method} {api.url} takes {takes}: give JSON, or pick an api with --api")
    return encode_multipart([(fields_[0], path.name, path.read_bytes())], {})



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
