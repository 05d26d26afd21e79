"""Request body → `Inputs`, driven by the api's declared request content type and schema.

Multipart bodies are split in memory (their size is already bounded). File fields are checked here
(one non-empty file per file field, no undeclared files), required fields first; then the other fields,
multipart text converted to its declared type, are validated against the schema (maserve.schema).
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

from maserve.config import ANY, JSON, MULTIPART, ApiSpec
from maserve.errors import InvalidInput, MalformedRequest, UnsupportedMediaType
from maserve.model import Inputs, UploadedFile
from maserve.schema import RequestSchema

# More parts than this in one request is refused (a body of tiny parts costs time for nothing).
_MAX_PARTS = 1000


# `; key=value` or `; key="quoted \\" value"` parameters of a header (RFC 9110 and RFC 7578).
_PARAMETER = re.compile(rb';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')
_QUOTED_PAIR = re.compile(rb"\\(.)")


@functools.lru_cache(maxsize=256)
def parse_header(value: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Split `type; key=value; ...` into the lower-cased type and its parameters (keys lower-cased).

    Extended `key*=` parameters are skipped: RFC 7578 forbids them in multipart/form-data.
    Cached, as a client sends the same headers again and again: treat the dict as read-only.
    """
    main, _, rest = value.partition(b";")
    params: dict[bytes, bytes] = {}
    if rest:
        for match in _PARAMETER.finditer(b";" + rest):
            key = match.group(1).lower()
            if key.endswith(b"*"):
                continue
            quoted = match.group(2)
            if quoted is None:
                params[key] = match.group(3)
            else:
                params[key] = _QUOTED_PAIR.sub(rb"\1", quoted) if b"\\" in quoted else quoted
    return main.strip().lower(), params


def media_type(content_type: bytes) -> tuple[str, dict[bytes, bytes]]:
    value, params = parse_header(content_type)
    return value.decode("latin-1"), params


def check_content_type(api: ApiSpec, content_type: bytes) -> bytes | None:
    """Refuse a content type other than the declared one (415); return the multipart boundary."""
    declared = api.request_content_type
    if not content_type and not api.declares_request:
        return None  # a body-less call (GET /v1/models); a body still has to be JSON
    value, params = media_type(content_type)
    if value != declared:
        if declared != ANY:
            got = value or "none"
            raise UnsupportedMediaType(f"this API accepts Content-Type {declared}, got {got}")
        if value != MULTIPART:
            return None  # read as JSON
    if value == MULTIPART:
        boundary = params.get(b"boundary")
        if not boundary:
            raise MalformedRequest("multipart/form-data without a boundary parameter")
        return boundary
    return None


def decode(api: ApiSpec, body: bytes, boundary: bytes | None, schema: RequestSchema | None = None) -> Inputs:
    """The request as the model sees it; `schema` is the api's compiled request schema (none: no
    validation beyond the file and required-field checks)."""
    if not body and not api.declares_request:
        return _inputs(api, {}, {})
    if api.request_content_type == MULTIPART:
        assert boundary is not None
        files, fields = _parse_multipart(body, boundary)
        _check_declared(api, files, fields)
        if schema is not None:
            _validate(schema, fields, convert=True)
        return _inputs(api, files, fields)
    if api.request_content_type == JSON:
        fields = _parse_json(api, body)
        if schema is not None:
            _validate(schema, fields)
        return _inputs(api, {}, fields)
    if api.request_content_type == ANY:  # no apis declared: multipart when it came so, else JSON
        if boundary is not None:
            return _inputs(api, *_parse_multipart(body, boundary))
        return _inputs(api, {}, _parse_json(api, body))
    return _inputs(api, {}, {"body": body})


def _validate(schema: RequestSchema, fields: dict[str, Any], convert: bool = False) -> None:
    """Convert form text (for multipart) and validate; a value nested so deep that converting it or
    writing the validator's message runs out of recursion is the caller's 400, not a 500."""
    try:
        if convert:
            schema.convert_form(fields)
        schema.validate(fields)
    except RecursionError:
        raise InvalidInput("the request is nested too deeply", error_code="MASERVE.INVALID_FIELD") from None


def _inputs(api: ApiSpec, files: dict[str, UploadedFile], fields: dict[str, Any]) -> Inputs:
    return Inputs(files=files, fields=fields, url=api.url, method=api.method)


def _split_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[bytes, bytes], bytes]]:
    """Split a multipart/form-data body (RFC 7578) into (headers, data) parts.

    A strict, in-memory split with bytes.find: the body is already bounded by
    MASERVE_MAX_BODY_BYTES, and for the typical one-image request it costs about a twentieth of a
    callback-driven streaming parser (bench/RESULTS.md), which is most of the request's time.
    """
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        first = body.find(b"\r\n" + delimiter)  # a preamble before the first delimiter is allowed
        if first < 0:
            raise MalformedRequest("malformed multipart body: the boundary from Content-Type never occurs")
        body = body[first + 2 :]
    separator = b"\r\n" + delimiter
    parts: list[tuple[dict[bytes, bytes], bytes]] = []
    pos = len(delimiter)
    for _ in range(_MAX_PARTS + 1):
        if body.startswith(b"--", pos):
            return parts
        if not body.startswith(b"\r\n", pos):
            # Transport padding (spaces, tabs) may follow a delimiter: RFC 2046 §5.1.1 says receivers
            # MUST handle it. Rare, so checked only here, off the common path.
            while body.startswith((b" ", b"\t"), pos):
                pos += 1
            if not body.startswith(b"\r\n", pos):
                raise MalformedRequest("malformed multipart body: a boundary line is not followed by CRLF")
        pos += 2
        if body.startswith(b"\r\n", pos):
            head_end, raw_headers = pos, b""
        else:
            head_end = body.find(b"\r\n\r\n", pos)
            if head_end < 0:
                raise MalformedRequest("malformed multipart body: a part's headers never end")
            raw_headers = body[pos:head_end]
            head_end += 2
        headers: dict[bytes, bytes] = {}
        for line in raw_headers.split(b"\r\n") if raw_headers else ():
            name, colon, value = line.partition(b":")
            if not colon:
                raise MalformedRequest("malformed multipart body: a part header has no colon")
            headers[name.strip().lower()] = value.strip()
        data_start = head_end + 2
        data_end = body.find(separator, data_start)
        if data_end < 0:
            raise MalformedRequest("malformed multipart body: it ends before the closing boundary")
        parts.append((headers, body[data_start:data_end]))
        pos = data_end + len(separator)
    raise MalformedRequest(f"malformed multipart body: more than {_MAX_PARTS} parts")


def _parse_multipart(body: bytes, boundary: bytes) -> tuple[dict[str, UploadedFile], dict[str, Any]]:
    files: dict[str, UploadedFile] = {}
    fields: dict[str, Any] = {}
    for headers, data in _split_multipart(body, boundary):
        _, disposition = parse_header(headers.get(b"content-disposition", b""))
        name_raw = disposition.get(b"name")
        if name_raw is None:
            raise MalformedRequest("malformed multipart body: a part has no Content-Disposition name")
        name = name_raw.decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None:
            if name in files:
                raise InvalidInput(f"field '{name}' takes one file, got more", error_code="MASERVE.TOO_MANY_FILES")
            content_type = headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            files[name] = UploadedFile(filename.decode("utf-8", "replace"), content_type, data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return files, fields


def _check_declared(api: ApiSpec, files: dict[str, UploadedFile], fields: dict[str, Any]) -> None:
    file_fields = api.file_fields
    for name in files:
        if name not in file_fields and api.request_schema.get("properties"):
            raise InvalidInput(
                f"unexpected file field '{name}'; this API takes files in: {', '.join(sorted(file_fields)) or 'none'}",
                error_code="MASERVE.UNEXPECTED_FIELD",
            )
    for name in file_fields:
        if name in fields:
            raise InvalidInput(f"field '{name}' must be a file upload", error_code="MASERVE.INVALID_FIELD")
        upload = files.get(name)
        if upload is not None and not upload.data:
            raise InvalidInput(f"the file in field '{name}' is empty", error_code="MASERVE.EMPTY_FILE")
    for name in api.required_fields:
        if name not in files and name not in fields:
            kind = "file " if name in file_fields else ""
            raise InvalidInput(f"missing required {kind}field '{name}'", error_code="MASERVE.MISSING_FIELD")


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number (RFC 8259 §6)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 24 else f"{text[:12]}...{text[-8:]}"
        raise _NotJson(f"the number {shown} is beyond a double's range (it would read as Infinity)")
    return value


# Built once: json.loads with a keyword builds a decoder per call.
_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode
# 1e999 reads as Infinity, which passes every bound of a schema: only a literal with a 3-digit
# exponent or 309 digits can, so only a body with one is read again with every float checked
# (a Python call per float would slow every body of many floats).
_decode_json_checked = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode
_MAYBE_HUGE = re.compile(r"[eE][+]?0*[1-9][0-9]{2}|[0-9]{309}")


def _parse_json(api: ApiSpec, body: bytes) -> dict[str, Any]:
    # Python's json reads NaN and Infinity (not JSON: a NaN passes every minimum/maximum of a schema);
    # it raises ValueError, not JSONDecodeError, for an integer of more than sys.get_int_max_str_digits()
    # digits, and RecursionError for arrays or objects nested deeper than the recursion limit.
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")  # as json.loads reads bytes
        value = _decode_json(text) if _MAYBE_HUGE.search(text) is None else _decode_json_checked(text)
    except (UnicodeDecodeError, json.JSONDecodeError, _NotJson) as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    except ValueError:
        raise MalformedRequest("the body is not valid JSON: a number has too many digits") from None
    except RecursionError:
        raise MalformedRequest("the body is not valid JSON: it is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidInput("the JSON body must be an object", error_code="MASERVE.INVALID_FIELD")
    for name in api.required_fields:
        if name not in value:
            raise InvalidInput(f"missing required field '{name}'", error_code="MASERVE.MISSING_FIELD")
    return value


def decode_message(api: ApiSpec, message: bytes | str, schema: RequestSchema | None = None) -> Inputs:
    """One WebSocket message as the model sees it: for an api that takes one file, a binary
    message is that file; otherwise a text (or UTF-8 binary) message is its JSON object."""
    if api.request_content_type == MULTIPART and len(api.file_fields) == 1 and isinstance(message, bytes):
        (name,) = api.file_fields
        files = {name: UploadedFile("message", "application/octet-stream", message)}
        _check_declared(api, files, {})
        if schema is not None:
            schema.validate({})
        return _inputs(api, files, {})
    if api.request_content_type == MULTIPART and api.file_fields:
        raise InvalidInput(f"this api takes its file ({', '.join(sorted(api.file_fields))}) as a binary message",
                           error_code="MASERVE.INVALID_MESSAGE")
    data = message.encode() if isinstance(message, str) else message
    fields = _parse_json(api, data)
    if schema is not None:
        schema.validate(fields)
    return _inputs(api, {}, fields)
