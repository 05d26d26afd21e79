"""HTTPS when config.json asks for it (same port, self-signed or mounted certificate); plain HTTP otherwise."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from helpers import ECHO_DIR, Server, echo_request, start_server
from maserve.tls import make_self_signed


def _https_echo(tmp_path: Path) -> Path:
    """A copy of the echo fixture whose APIs are all declared https."""
    model_dir = tmp_path / "echo-https"
    shutil.copytree(ECHO_DIR, model_dir, ignore=shutil.ignore_patterns("__pycache__"))
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    assert config["apis"]
    for api in config["apis"]:
        api["protocol"] = "https"
    config_path.write_text(json.dumps(config, indent=2))
    return model_dir


def _peer_certificate(port: int) -> bytes:
    """The DER certificate the server presents on 127.0.0.1:port (no verification: it is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der
    return der


def _plain_http_fails(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
    finally:
        conn.close()


def test_https_config_serves_tls_with_self_signed_certificate(tmp_path: Path) -> None:
    server = start_server(tmp_path, _https_echo(tmp_path), https=True)
    try:
        health = server.get("/health")
        assert health.status == 200 and health.json() == {"health": "true"}
        conn = server.connect()
        try:
            reply = echo_request(conn, 2048)
            again = echo_request(conn, 10)  # keep-alive over TLS
        finally:
            conn.close()
        assert reply.status == 200 and reply.json()["size"] == 2048
        assert again.status == 200 and again.json()["size"] == 10

        cert = x509.load_der_x509_certificate(_peer_certificate(server.port))
        assert cert.issuer == cert.subject, "expected a self-signed certificate"
        assert "self-signed" in server.logs()
        started = next(r for r in server.log_records() if r.get("message") == "maserve started")
        assert started["protocol"] == "https"

        _plain_http_fails(server)
        assert server.get("/health").status == 200  # a bad client does not hurt the server
    finally:
        server.stop()


def test_https_uses_the_given_certificate(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    cert_path, key_path = make_self_signed(cert_dir)
    server = start_server(
        tmp_path,
        _https_echo(tmp_path),
        env={"MASERVE_TLS_CERT": str(cert_path), "MASERVE_TLS_KEY": str(key_path)},
        https=True,
    )
    try:
        expected = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
        assert _peer_certificate(server.port) == expected
        served_pem = ssl.get_server_certificate(("127.0.0.1", server.port), timeout=10)
        assert ssl.PEM_cert_to_DER_cert(served_pem) == expected
        assert "made a self-signed certificate" not in server.logs()
        conn = server.connect()
        try:
            reply = echo_request(conn, 99)
        finally:
            conn.close()
        assert reply.status == 200 and reply.json()["size"] == 99
    finally:
        server.stop()


def test_http_config_serves_plain_http_only(tmp_path: Path) -> None:
    server = start_server(tmp_path, ECHO_DIR)
    try:
        health = server.get("/health")
        assert health.status == 200 and health.json() == {"health": "true"}
        conn = server.connect()
        try:
            reply = echo_request(conn, 64)
        finally:
            conn.close()
        assert reply.status == 200 and reply.json()["size"] == 64
        with pytest.raises(OSError):  # ssl.SSLError is an OSError; so is a reset
            _peer_certificate(server.port)
        assert server.get("/health").status == 200
    finally:
        server.stop()
