"""Every error a caller can see: one exception type per reply, mapped to status and JSON body.

The body always has the shape `{"error_code": ..., "error_msg": ...}` so that clients (and the
ModelArts console) can show the reason without parsing free text.
"""

from __future__ import annotations

import json


class ServiceError(Exception):
    """An error answered to the caller with `status` and a JSON body."""

    status: int = 500
    error_code: str = "MASERVE.INTERNAL_ERROR"

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error_code is not None:
            self.error_code = error_code

    def body(self) -> bytes:
        # UTF-8 characters, like answers (a message may quote a non-ASCII file name or field).
        return json.dumps({"error_code": self.error_code, "error_msg": self.message}, ensure_ascii=False).encode(
            errors="backslashreplace")


class InvalidInput(ServiceError):
    """The request is well-formed HTTP but its content cannot be used (models raise this)."""

    status = 400
    error_code = "MASERVE.INVALID_INPUT"


class MalformedRequest(ServiceError):
    status = 400
    error_code = "MASERVE.MALFORMED_REQUEST"


class NotFound(ServiceError):
    status = 404
    error_code = "MASERVE.NOT_FOUND"


class MethodNotAllowed(ServiceError):
    status = 405
    error_code = "MASERVE.METHOD_NOT_ALLOWED"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class PayloadTooLarge(ServiceError):
    status = 413
    error_code = "MASERVE.PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ServiceError):
    status = 415
    error_code = "MASERVE.UNSUPPORTED_MEDIA_TYPE"


class ModelNotReady(ServiceError):
    status = 503
    error_code = "MASERVE.MODEL_NOT_READY"


class InferenceTimeout(ServiceError):
    status = 504
    error_code = "MASERVE.INFERENCE_TIMEOUT"


class ModelError(ServiceError):
    """The model itself failed: a defect on the server side, not the caller's."""

    status = 500
    error_code = "MASERVE.MODEL_ERROR"


class ServiceStopping(ServiceError):
    """The drain window of a stop ended while a stream or WebSocket was still running."""

    status = 503
    error_code = "MASERVE.SERVICE_STOPPING"


class UpgradeRequired(ServiceError):
    """Plain HTTP to a WebSocket api."""

    status = 426
    error_code = "MASERVE.UPGRADE_REQUIRED"


class InvalidResponse(ServiceError):
    """The model answered something its own config.json rules out, or that is not JSON: the
    server's fault, not the caller's."""

    status = 500
    error_code = "MASERVE.INVALID_RESPONSE"


class Overloaded(ServiceError):
    """The worker is at its cap of connections or of requests in flight: retry shortly."""

    status = 503
    error_code = "MASERVE.OVERLOADED"


class RequestTimeout(ServiceError):
    """The request's headers or body did not arrive in time (a stalled or very slow client)."""

    status = 408
    error_code = "MASERVE.REQUEST_TIMEOUT"


class OutOfMemory(ServiceError):
    """The model raised MemoryError: this request fails, and its worker restarts."""

    status = 500
    error_code = "MASERVE.OUT_OF_MEMORY"
