"""Small HTTP client over http.client: one place that knows about --https and timeouts."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any

TIMEOUT = 30.0


def unverified_tls() -> ssl.SSLContext:
    """TLS without certificate checks: the services checked here often use a self-signed one."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    https: bool

    def connect(self, timeout: float = TIMEOUT) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=unverified_tls())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def fetch(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One request on its own connection."""
    conn = endpoint.connect(timeout)
    try:
        return send(conn, method, path, body, headers)
    finally:
        conn.close()
