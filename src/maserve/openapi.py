"""`GET /openapi.json`: an OpenAPI 3.1 description generated from config.json.

Built once at app construction and served as fixed bytes, so that clients and API gateways can be
generated from the same file the platform reads, and never drift from it.
"""

from __future__ import annotations

import copy
from typing import Any

from maserve.config import ApiSpec, ModelConfig
from maserve.schema import FILE_TYPE
from maserve.validate import EVENT_STREAM, JSON

OPENAPI_URL = "/openapi.json"
OPENAPI_VERSION = "3.1.0"

# Every error reply has this shape (maserve.errors.ServiceError.body).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error_code": {"type": "string"}, "error_msg": {"type": "string"}},
    "required": ["error_code", "error_msg"],
}
_ERRORS = {
    "400": "the request does not match the api (MASERVE.INVALID_FIELD, MASERVE.MISSING_FIELD, ...)",
    "404": "no api at this path",
    "405": "method not allowed on this path",
    "413": "request body over MASERVE_MAX_BODY_BYTES",
    "415": "a Content-Type other than the declared one",
    "500": "the model failed, or its answer broke the response schema",
    "503": "the model is still loading",
    "504": "the inference took longer than MASERVE_REQUEST_TIMEOUT_SECONDS",
}

# One event of a `text/event-stream` answer, as SSE parsers read it ({"event", "data"}; the event
# type is "message" when the server sends none). Open API 3.1 has no word for a stream's items, so
# `schema` describes one event, as Open API 3.2's `itemSchema` does and tools read 3.1 documents.
_EVENT_SCHEMA: dict[str, Any] = {
    "description": "one Server-Sent Event per item the model yields; a failure after the first event "
    "ends the stream with an `error` event",
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "event": {"const": "message"},
                "data": {"type": "string", "description": "the item: JSON, or text as the model wrote it ([DONE])"},
            },
            "required": ["data"],
        },
        {
            "type": "object",
            "properties": {
                "event": {"const": "error"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"$ref": "#/components/schemas/Error"}},
            },
            "required": ["event", "data"],
        },
    ],
}


def openapi_document(config: ModelConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `config`'s apis and health check."""
    paths: dict[str, dict[str, Any]] = {}
    for api in config.apis:
        if not api.websocket:  # OpenAPI does not describe WebSocket: listed in the description
            paths.setdefault(api.url, {})[api.method.lower()] = _operation(api)
    health = {
        "summary": "health check: 200 once the model is loaded and warmed up",
        "operationId": "health",
        "responses": {
            "200": _json_response("ready", _health_schema("true")),
            "503": _json_response("the model is still loading", _health_schema("false")),
        },
    }
    paths.setdefault(config.health_url, {})["get"] = health
    info: dict[str, Any] = {"title": str(config.raw.get("model_algorithm", "model")), "version": "1"}
    metrics = config.raw.get("metrics")
    notes = []
    if metrics:
        notes.append("metrics: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    sockets = [api.url for api in config.apis if api.websocket]
    if sockets:
        notes.append("WebSocket apis (one message in, one or more out): " + ", ".join(sockets))
    if notes:
        info["description"] = "; ".join(notes)
    return {
        "openapi": OPENAPI_VERSION,
        "info": info,
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "responses": {f"Error{code}": _json_response(text, {"$ref": "#/components/schemas/Error"}) for code, text in _ERRORS.items()},
        },
    }


def _operation(api: ApiSpec) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "the model's answer", "content": _answer_content(api)}}
    for code in _ERRORS:
        responses[code] = {"$ref": f"#/components/responses/Error{code}"}
    operation: dict[str, Any] = {"operationId": _operation_id(api), "responses": responses}
    if api.method not in ("GET", "DELETE"):
        operation["requestBody"] = {
            "required": True,
            "content": {api.request_content_type: {"schema": openapi_schema(api.request_schema)}},
        }
    return operation


def _answer_content(api: ApiSpec) -> dict[str, Any]:
    """What a 200 really carries: JSON whatever the declared response type (maserve answers a
    `multipart/json` or `multipart/form-data` api's JSON as application/json), and for a
    `text/event-stream` api also the events, sent when `predict` returns an iterator (a dict is
    still a plain JSON reply: one api serves OpenAI's `"stream": false` and `"stream": true`)."""
    content: dict[str, Any] = {JSON: {"schema": openapi_schema(api.response_schema)}}
    if api.response_content_type == EVENT_STREAM:
        content[EVENT_STREAM] = {"schema": copy.deepcopy(_EVENT_SCHEMA)}
    return content


def openapi_schema(schema: Any) -> Any:
    """A copy of a config.json schema with ModelArts' `{"type": "file"}` as OpenAPI's binary string."""
    if isinstance(schema, list):
        return [openapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return copy.deepcopy(schema)
    out = {key: (value if key in ("enum", "const", "default", "examples") else openapi_schema(value)) for key, value in schema.items()}
    if out.get("type") == FILE_TYPE:
        out["type"] = "string"
        out["format"] = "binary"
    return out


def _operation_id(api: ApiSpec) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in api.url.strip("/")) or "root"
    return f"{api.method.lower()}_{slug}"


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _health_schema(value: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"health": {"const": value}}, "required": ["health"]}
