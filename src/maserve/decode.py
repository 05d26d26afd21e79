"""Request body → `Inputs`, driven by the api's declared request content type and schema.

Multipart bodies go through python-multipart's streaming parser; the checks here are the ones the
schema implies (required fields present, one non-empty file per file field, no undeclared files).
"""

from __future__ import annotations

import json
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from maserve.config import JSON, MULTIPART, ApiSpec
from maserve.errors import InvalidInput, MalformedRequest, UnsupportedMediaType
from maserve.model import Inputs, UploadedFile


def media_type(content_type: bytes) -> tuple[str, dict[bytes, bytes]]:
    value, params = parse_options_header(content_type)
    return value.decode("latin-1"), params


def check_content_type(api: ApiSpec, content_type: bytes) -> bytes | None:
    """Refuse a content type other than the declared one (415); return the multipart boundary."""
    declared = api.request_content_type
    value, params = media_type(content_type)
    if value != declared:
        got = value or "none"
        raise UnsupportedMediaType(f"this API accepts Content-Type {declared}, got {got}")
    if declared == MULTIPART:
        boundary = params.get(b"boundary")
        if not boundary:
            raise MalformedRequest("multipart/form-data without a boundary parameter")
        return boundary
    return None


def decode(api: ApiSpec, body: bytes, boundary: bytes | None) -> Inputs:
    if api.request_content_type == MULTIPART:
        assert boundary is not None
        return _check_declared(api, _parse_multipart(body, boundary))
    if api.request_content_type == JSON:
        return _parse_json(api, body)
    return Inputs(fields={"body": body})


class _Collector:
    """Callbacks for MultipartParser: gather parts as (headers, data)."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[bytes, bytes], bytearray]] = []
        self._field = b""
        self._value = b""
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts.append(({}, bytearray()))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].extend(data[start:end])

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.parts[-1][0][self._field.lower()] = self._value
        self._field = b""
        self._value = b""

    def _end(self) -> None:
        self.ended = True


def _parse_multipart(body: bytes, boundary: bytes) -> Inputs:
    collector = _Collector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedRequest(f"malformed multipart body: {exc}") from None
    if not collector.ended:
        raise MalformedRequest("malformed multipart body: it ends before the closing boundary")
    files: dict[str, UploadedFile] = {}
    fields: dict[str, Any] = {}
    for headers, data in collector.parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name_raw = disposition.get(b"name")
        if name_raw is None:
            raise MalformedRequest("malformed multipart body: a part has no Content-Disposition name")
        name = name_raw.decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None:
            if name in files:
                raise InvalidInput(f"field '{name}' takes one file, got more", error_code="MASERVE.TOO_MANY_FILES")
            content_type = headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            files[name] = UploadedFile(filename.decode("utf-8", "replace"), content_type, bytes(data))
        else:
            fields[name] = data.decode("utf-8", "replace")
    return Inputs(files=files, fields=fields)


def _check_declared(api: ApiSpec, inputs: Inputs) -> Inputs:
    file_fields = api.file_fields
    for name in inputs.files:
        if name not in file_fields and api.request_schema.get("properties"):
            raise InvalidInput(
                f"unexpected file field '{name}'; this API takes files in: {', '.join(sorted(file_fields)) or 'none'}",
                error_code="MASERVE.UNEXPECTED_FIELD",
            )
    for name in file_fields:
        if name in inputs.fields:
            raise InvalidInput(f"field '{name}' must be a file upload", error_code="MASERVE.INVALID_FIELD")
        upload = inputs.files.get(name)
        if upload is not None and not upload.data:
            raise InvalidInput(f"the file in field '{name}' is empty", error_code="MASERVE.EMPTY_FILE")
    for name in api.required_fields:
        if name not in inputs.files and name not in inputs.fields:
            kind = "file " if name in file_fields else ""
            raise InvalidInput(f"missing required {kind}field '{name}'", error_code="MASERVE.MISSING_FIELD")
    return inputs


def _parse_json(api: ApiSpec, body: bytes) -> Inputs:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("the JSON body must be an object", error_code="MASERVE.INVALID_FIELD")
    for name in api.required_fields:
        if name not in value:
            raise InvalidInput(f"missing required field '{name}'", error_code="MASERVE.MISSING_FIELD")
    return Inputs(fields=value)
