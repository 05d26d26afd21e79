"""multipart/form-data bodies as a browser or `curl -F` sends them (RFC 7578), for maserve's clients
(`maserve predict`, `maserve check`); the server's own parsing is in decode.py."""

from __future__ import annotations

import mimetypes
import uuid

from maserve.config import MULTIPART


def encode_multipart(files: list[tuple[str, str, bytes]], form: dict[str, str],
                     boundary: str | None = None) -> tuple[bytes, str]:
    """(body, Content-Type header) for plain `form` fields and `files` as (field, file name, data);
    a random boundary unless one is given (`maserve batch` draws one per job)."""
    boundary = boundary or uuid.uuid4().hex
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
