"""Requests built from a model directory's samples/ folder and the answers they must get.

samples/expected.json maps a sample file to the full JSON answer it must get, for the model's only
api (and its WebSocket twins: apis with the same request Content-type served over WebSocket):
{"seven.jpg": {"mnist_result": 7}}. With several HTTP apis it maps "METHOD /url" to such a map:
{"POST /": {"seven.jpg": {...}}, "POST /batch": {"two.json": {...}}}. A multipart api gets the file
in its single {"type": "file"} field; an application/json api gets a .json file as the body. A
WebSocket api ("WEBSOCKET /ws") gets the file as one message and must answer it with that JSON
first. An answer given as `null` is checked for its form only (status, Content-type, response
schema; for a WebSocket api, an answer that is not an error message): answers that carry ids or
times, and streams, whose events are judged by the stream row. An api that declares no request
(`GET /v1/models`) is called without a body: its map's keys are labels, not files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maserve.config import JSON, MULTIPART, ApiSpec
from maserve.multipart import encode_multipart

_ROUTE_KEY = re.compile(r"^[A-Za-z]+ /")


class SampleError(ValueError):
    """expected.json or a sample file cannot be turned into a request."""


@dataclass(frozen=True)
class Sample:
    name: str
    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]
    expected: Any

    @property
    def label(self) -> str:
        return f"{self.method} {self.url} {self.name}"


def route(api: ApiSpec) -> str:
    """The api's key in expected.json: "POST /", or "WEBSOCKET /ws" for a WebSocket api."""
    return f"{'WEBSOCKET' if api.websocket else api.method.upper()} {api.url}"


def load_expected(model_dir: Path | None, apis: tuple[ApiSpec, ...]) -> dict[str, dict[str, Any]]:
    """route → {file: expected answer}; {} when there is no samples/expected.json."""
    path = model_dir / "samples" / "expected.json" if model_dir else None
    if path is None or not path.is_file() or not apis:
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SampleError(f"{path}: must be an object")
    if raw and all(_ROUTE_KEY.match(k) and isinstance(v, dict) for k, v in raw.items()):
        return {" ".join([k.split(" ", 1)[0].upper(), k.split(" ", 1)[1]]): v for k, v in raw.items()}
    http = [a for a in apis if not a.websocket]
    if len(http) != 1:
        raise SampleError(f'{path}: with {len(apis)} apis, map "METHOD /url" to {{file: answer}}')
    # one HTTP api: the map is for it, and for the WebSocket apis that take the same requests
    same = [a for a in apis if a.websocket and a.request_content_type == http[0].request_content_type]
    return {route(api): raw for api in http + same}


def build(model_dir: Path, api: ApiSpec, name: str, expected: Any) -> Sample:
    """The request that sends sample `name` to `api`."""
    if not api.declares_request and not api.websocket:
        return Sample(name, api.method, api.url, None, {}, expected)
    path = model_dir / "samples" / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SampleError(f"{path}: {exc.strerror}") from None
    if api.websocket:  # the file is the message: binary for a file api, text for a JSON one
        return Sample(name, "WEBSOCKET", api.url, data, {}, expected)
    if api.request_content_type == MULTIPART:
        fields = sorted(api.file_fields)
        if len(fields) != 1:
            raise SampleError(f"{route(api)} declares {len(fields)} file fields; a sample fills exactly one")
        body, ctype = encode_multipart([(fields[0], name, data)], {})
        return Sample(name, api.method, api.url, body, {"Content-Type": ctype}, expected)
    if api.request_content_type == JSON:
        if path.suffix != ".json":
            raise SampleError(f"{name}: an application/json api takes a .json sample")
        return Sample(name, api.method, api.url, data, {"Content-Type": JSON}, expected)
    raise SampleError(f"{route(api)}: cannot build a {api.request_content_type} request")


def all_samples(model_dir: Path | None, apis: tuple[ApiSpec, ...]) -> tuple[dict[str, list[Sample]], list[str]]:
    """route → samples, and the problems met building them."""
    problems: list[str] = []
    try:
        expected = load_expected(model_dir, apis)
    except SampleError as exc:
        return {}, [str(exc)]
    out: dict[str, list[Sample]] = {}
    for api in apis:
        for name, answer in (expected.get(route(api)) or {}).items():
            try:
                assert model_dir is not None
                out.setdefault(route(api), []).append(build(model_dir, api, name, answer))
            except SampleError as exc:
                problems.append(str(exc))
    unknown = set(expected) - {route(a) for a in apis}
    problems += [f"expected.json names {r}, which config.json does not declare" for r in sorted(unknown)]
    return out, problems
