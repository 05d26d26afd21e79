"""The prediction page: try any served model in a browser, the way the ModelArts console's
"Prediction" tab does, with forms generated from config.json.

Served by the model's own server under MASERVE_PAGE_PATH (default `/_maserve/`; empty: off, as in
the built image, since ModelArts routes every path to the image). Only static assets live there:
the page (index.html), its script and style sheet, and the files of the model's samples/ that
samples/expected.json names (or, without one, the files that fit an api). Everything the page does
is an ordinary call of the service's own apis, /health and /openapi.json: no endpoint exists for
the page alone, so what works in the page works from curl.

The forms are built in the browser from config.json's apis, embedded in the page as JSON at start
rather than read from /openapi.json: OpenAPI has no word for WebSocket apis (the MNIST canvas and
the chat socket need them), /openapi.json is absent when config.json claims that path, and the
samples and the server's settings (the facts at the top) are in no api. The data is fixed for the
server's life, so the page is rendered once, here, before the workers fork. No framework, no build
step, no network beyond the server itself (air-gapped users): plain DOM code in page.js, an ES
module that imports common.js, stream.js and draw.js by relative path (script-src 'self' covers them).
"""

from __future__ import annotations

import html
import json
import logging
import math
import mimetypes
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from maserve import __version__
from maserve.config import JSON, MULTIPART, ApiSpec, ModelConfig
from maserve.errors import MethodNotAllowed, NotFound
from maserve.settings import Settings, SettingsError

log = logging.getLogger("maserve.page")

Headers = list[tuple[bytes, bytes]]

# The page's assets: name under the page path → (file in static/, Content-Type). page.js is a module
# (index.html loads it with type="module") that imports the other three by relative path.
_ASSETS = {
    "page.js": ("page.js", b"text/javascript; charset=utf-8"),
    "common.js": ("common.js", b"text/javascript; charset=utf-8"),
    "stream.js": ("stream.js", b"text/javascript; charset=utf-8"),
    "draw.js": ("draw.js", b"text/javascript; charset=utf-8"),
    "page.css": ("page.css", b"text/css; charset=utf-8"),
}
# Same origin only: the page must work air-gapped, and nothing it shows may load from elsewhere.
# data: for the empty favicon (no request, so no 404 in the console); blob: for image previews.
_SECURITY: Headers = [
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                  b"img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; "
                                  b"form-action 'none'; frame-ancestors 'none'")),
]
# Samples the page offers: at most this many bytes in all (they are held in memory, shared by the
# workers), none larger than MASERVE_MAX_BODY_BYTES (the server would refuse it).
_SAMPLES_BUDGET_BYTES = 32 * 1024 * 1024
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SampleFile:
    """One file of samples/ the page offers for one api."""

    name: str
    data: bytes
    content_type: bytes


class Page:
    """The page's assets under one path prefix; `reply` answers a GET or HEAD under it."""

    def __init__(self, prefix: str, index: bytes, samples: dict[str, SampleFile]) -> None:
        self.prefix = prefix  # ends with "/"
        self._bare = prefix.rstrip("/")
        self._index = index
        self._samples = samples
        static = resources.files(__name__) / "static"
        self._assets = {name: (static.joinpath(file).read_bytes(), ctype) for name, (file, ctype) in _ASSETS.items()}

    def owns(self, path: str) -> bool:
        return path.startswith(self.prefix) or path == self._bare

    def reply(self, path: str, method: str) -> tuple[int, bytes, Headers]:
        """(status, body, headers with the Content-Type first); NotFound or MethodNotAllowed as
        JSON errors like every other reply."""
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET (the prediction page)", ["GET", "HEAD"])
        if path == self._bare:  # relative links need the slash
            return 308, b"", [(b"content-type", b"text/plain"), (b"location", self.prefix.encode()), *_SECURITY]
        name = path[len(self.prefix):]
        if name == "":
            return 200, self._index, [(b"content-type", b"text/html; charset=utf-8"), *_SECURITY]
        asset = self._assets.get(name)
        if asset is not None:
            return 200, asset[0], [(b"content-type", asset[1]), *_SECURITY]
        sample = self._samples.get(name.removeprefix("samples/")) if name.startswith("samples/") else None
        if sample is not None:
            return 200, sample.data, [(b"content-type", sample.content_type), *_SECURITY]
        raise NotFound(f"no page file at {path}; the prediction page is {self.prefix}")


def build_page(settings: Settings, config: ModelConfig, reserved: Iterable[str | None],
               openapi_url: str | None) -> Page | None:
    """The page for MASERVE_PAGE_PATH, or None when it is empty (off). SettingsError when an api,
    the health check, /openapi.json or the metrics path lies at or under the page's path."""
    if not settings.page_path:
        return None
    from maserve.check.samples import route  # maserve.check's runner costs 20 ms to import: only when on
    prefix = settings.page_path if settings.page_path.endswith("/") else settings.page_path + "/"
    for path in sorted(p for p in reserved if p):
        if path == prefix.rstrip("/") or path.startswith(prefix):
            raise SettingsError(f"MASERVE_PAGE_PATH {settings.page_path} holds {path}, a path the service "
                                "answers: set another one, or an empty value to serve no page")
    samples, offered = _samples(settings, config)
    model_name = settings.model_dir.name if settings.model_dir else ""
    algorithm = config.raw.get("model_algorithm")
    data: dict[str, Any] = {
        "base": prefix,
        "version": __version__,
        "model": {
            "dir": model_name,
            "algorithm": algorithm,
            "type": config.raw.get("model_type"),
            "description": config.raw.get("description"),
            "metrics": config.raw.get("metrics"),
        },
        "facts": {
            "protocol": "https" if config.uses_tls else "http",
            "workers": settings.workers,
            "grace_seconds": settings.grace_seconds,
            "drain_seconds": settings.drain_seconds,
            "keepalive_seconds": settings.keepalive_seconds,
            "request_timeout_seconds": settings.request_timeout_seconds,
            "max_body_bytes": settings.max_body_bytes,
            "validate_responses": settings.validate_responses,
        },
        "health_url": config.health_url,
        "openapi_url": openapi_url,
        "metrics_path": settings.metrics_path or None,
        "apis": [_api(api, route(api), offered.get(route(api), []), prefix) for api in config.apis],
    }
    title = html.escape(f"{algorithm or model_name or 'model'} · maserve")
    template = (resources.files(__name__) / "static" / "index.html").read_text(encoding="utf-8")
    index = template.replace("{{title}}", title).replace("{{base}}", html.escape(prefix)).replace(
        "{{data}}", _script_json(data))
    return Page(prefix, index.encode(), samples)


def _api(api: ApiSpec, key: str, samples: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    return {
        "key": key,
        "url": api.url,
        "method": api.method,
        "websocket": api.websocket,
        "declares_request": api.declares_request,
        "request_type": api.request_content_type,
        "request_schema": api.request_schema,
        "file_fields": sorted(api.file_fields),
        "response_type": api.response_content_type,
        "response_schema": api.response_schema,
        "samples": [{**s, "url": f"{prefix}samples/{s['name']}"} if s["file"] else s for s in samples],
    }


def _samples(settings: Settings, config: ModelConfig) -> tuple[dict[str, SampleFile], dict[str, list[dict[str, Any]]]]:
    """The sample files the page serves, and per api ("POST /") what it offers: samples/expected.json's
    map (as `maserve check` reads it), else the files that fit (images for a file api, .json for a
    JSON one, also when expected.json is broken: that is logged, and never stops the start)."""
    from maserve.check.samples import SampleError, load_expected, route

    model_dir = settings.model_dir
    folder = model_dir / "samples" if model_dir else None
    if folder is None or not folder.is_dir():
        return {}, {}
    try:
        expected = load_expected(model_dir, config.apis)
        declared = bool(expected)
    except SampleError as exc:
        log.warning(f"prediction page: {exc}; offering the sample files that fit each api instead")
        expected, declared = {}, False
    files: dict[str, SampleFile] = {}
    offered: dict[str, list[dict[str, Any]]] = {}
    budget = _SAMPLES_BUDGET_BYTES
    for api in config.apis:
        if declared:
            names: dict[str, Any] = {name: answer for name, answer in (expected.get(route(api)) or {}).items()}
        else:
            names = {path.name: None for path in sorted(folder.iterdir()) if _fits(api, path)}
        for name, answer in names.items():
            entry = {"name": name, "expected": _finite(answer), "file": api.declares_request or api.websocket}
            if entry["file"] and name not in files:
                path = folder / name
                size = path.stat().st_size if path.is_file() and path.parent == folder else -1
                if not 0 <= size <= min(settings.max_body_bytes, budget):
                    continue
                budget -= size
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                files[name] = SampleFile(name, path.read_bytes(), ctype.encode())
            offered.setdefault(route(api), []).append(entry)
    return files, offered


def _fits(api: ApiSpec, path: Path) -> bool:
    """Without expected.json: an image for an api with one file field, a .json file for a JSON api."""
    if not path.is_file() or path.name == "expected.json":
        return False
    if api.request_content_type == MULTIPART and len(api.file_fields) == 1:
        return path.suffix.lower() in _IMAGE_SUFFIXES
    return api.request_content_type == JSON and path.suffix == ".json" and api.declares_request


def _finite(value: Any) -> Any:
    """`value` with NaN and Infinity as null (Python reads them in JSON files; JSON has no word for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json">: no `</script>`, no comment openers."""
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
