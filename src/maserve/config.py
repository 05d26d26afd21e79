"""config.json, ModelArts' model configuration: load, check (maserve.validate), typed view.

Only what serving needs is modelled here; everything else in the file is kept but ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from maserve.validate import ANY, CONTENT_TYPE_TYPOS, ERROR, JSON, KEY_TYPOS, MULTIPART, Finding, validate_config

__all__ = ["ANY", "JSON", "MULTIPART", "ApiSpec", "ConfigError", "ModelConfig", "load_config", "read_config"]


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
    # False when the api has no `request` (a GET such as /v1/models): a body-less call is then
    # answered with no fields instead of being refused for its missing JSON body.
    declares_request: bool = True

    @property
    def websocket(self) -> bool:
        """Served over WebSocket (`"protocol": "ws"` or `"wss"`), not plain HTTP."""
        return self.protocol in ("ws", "wss")

    @cached_property  # read for every request
    def file_fields(self) -> frozenset[str]:
        """Request fields declared `{"type": "file"}`: they arrive as uploaded files."""
        props = self.request_schema.get("properties", {})
        return frozenset(name for name, spec in props.items() if isinstance(spec, dict) and spec.get("type") == "file")

    @cached_property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(self.request_schema.get("required", ()))


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    raw: dict[str, Any]
    apis: tuple[ApiSpec, ...]
    health_url: str
    # Accepted but worth fixing (ModelArts' typos, ignored dependencies): `maserve serve` logs them.
    warnings: tuple[Finding, ...] = ()

    @property
    def uses_tls(self) -> bool:
        return any(api.protocol in ("https", "wss") for api in self.apis)


def read_config(path: Path) -> dict[str, Any]:
    """Parse config.json into its top-level object; raise ConfigError if it is missing or not JSON."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return raw


def load_config(path: Path) -> ModelConfig:
    """Read and check config.json; raise ConfigError listing every error with its JSON path."""
    raw = read_config(path)
    findings = validate_config(raw)
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        lines = [f"{f.path}: {f.message}" for f in errors]
        raise ConfigError(f"{path}: invalid ModelArts config:\n  " + "\n  ".join(lines))
    for api in raw.get("apis") or []:
        for typo, key in KEY_TYPOS.items():
            if typo in api and key not in api:
                api[key] = api[typo]
    apis = tuple(_api_spec(api) for api in raw.get("apis") or []) or (DEFAULT_API,)
    health_url = (raw.get("health") or {}).get("url", "/health")
    warnings = tuple(f for f in findings if f.level != ERROR)
    return ModelConfig(path=path, raw=raw, apis=apis, health_url=health_url, warnings=warnings)


# No apis in config.json: what the platform's built-in runtimes serve (validate warns).
DEFAULT_API = ApiSpec(url="/", method="POST", protocol="http", request_content_type=ANY, request_schema={},
                      response_content_type=JSON, response_schema={})


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
        declares_request=bool(api.get("request")),
    )


def _content_type(value: str) -> str:
    value = value.strip().lower()
    return CONTENT_TYPE_TYPOS.get(value, value)
