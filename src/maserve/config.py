"""config.json, ModelArts' model configuration: load, validate with jsonschema, typed view.

Only what serving needs is modelled here; everything else in the file is kept but ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

MULTIPART = "multipart/form-data"
JSON = "application/json"

# The platform's own samples carry these typos and it accepts them; so do we.
_KEY_TYPOS = {"procotol": "protocol"}
_CONTENT_TYPE_TYPOS = {"applicaton/json": JSON}

_BODY_SCHEMA = {
    "type": "object",
    "properties": {"Content-type": {"type": "string"}, "data": {"type": "object"}},
}
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_algorithm", "model_type"],
    "properties": {
        "model_algorithm": {"type": "string", "pattern": "^[A-Za-z][^&!'\"<>=]{0,35}$"},
        "model_type": {"type": "string"},
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "string"]}},
        "apis": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "protocol": {"enum": ["http", "https"]},
                    "url": {"type": "string", "pattern": "^/"},
                    "method": {"type": "string", "pattern": "(?i)^(get|post|put|delete|patch)$"},
                    "request": _BODY_SCHEMA,
                    "response": _BODY_SCHEMA,
                },
            },
        },
        "health": {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string", "pattern": "^/"}, "protocol": {"enum": ["http", "https"]}},
        },
    },
}


class ConfigError(ValueError):
    """config.json is missing or breaks ModelArts' format."""


@dataclass(frozen=True)
class ApiSpec:
    """One `apis[]` entry: a route the server answers."""

    url: str
    method: str
    protocol: str
    request_content_type: str
    request_schema: dict[str, Any]
    response_content_type: str
    response_schema: dict[str, Any]

    @property
    def file_fields(self) -> frozenset[str]:
        """Request fields declared `{"type": "file"}`: they arrive as uploaded files."""
        props = self.request_schema.get("properties", {})
        return frozenset(name for name, spec in props.items() if isinstance(spec, dict) and spec.get("type") == "file")

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(self.request_schema.get("required", ()))


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    raw: dict[str, Any]
    apis: tuple[ApiSpec, ...]
    health_url: str

    @property
    def uses_tls(self) -> bool:
        return any(api.protocol == "https" for api in self.apis)


def load_config(path: Path) -> ModelConfig:
    """Read and validate config.json; raise ConfigError naming the problem and its JSON path."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    for api in raw.get("apis") or []:
        if isinstance(api, dict):
            for typo, key in _KEY_TYPOS.items():
                if typo in api and key not in api:
                    api[key] = api[typo]
    errors = sorted(jsonschema.Draft7Validator(CONFIG_SCHEMA).iter_errors(raw), key=lambda e: list(e.path))
    if errors:
        lines = [f"{_json_path(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError(f"{path}: invalid ModelArts config:\n  " + "\n  ".join(lines))
    apis = tuple(_api_spec(api) for api in raw.get("apis") or [])
    seen: set[tuple[str, str]] = set()
    for api in apis:
        if (api.url, api.method) in seen:
            raise ConfigError(f"{path}: two apis entries declare {api.method} {api.url}")
        seen.add((api.url, api.method))
    health_url = (raw.get("health") or {}).get("url", "/health")
    return ModelConfig(path=path, raw=raw, apis=apis, health_url=health_url)


def _api_spec(api: dict[str, Any]) -> ApiSpec:
    request = api.get("request") or {}
    response = api.get("response") or {}
    return ApiSpec(
        url=api.get("url", "/"),
        method=api.get("method", "post").upper(),
        protocol=api.get("protocol", "http"),
        request_content_type=_content_type(request.get("Content-type", JSON)),
        request_schema=request.get("data") or {},
        response_content_type=_content_type(response.get("Content-type", JSON)),
        response_schema=response.get("data") or {},
    )


def _content_type(value: str) -> str:
    value = value.strip().lower()
    return _CONTENT_TYPE_TYPOS.get(value, value)


def _json_path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
