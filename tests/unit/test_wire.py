"""The private attributes app/wire.py relies on still exist in the pinned requests, urllib3 and
http.client: an upgrade that removes one fails here, loudly, instead of in production."""

from __future__ import annotations

import _socket
import http.client
import socket
from pathlib import Path

import gevent.socket
import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[2]


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned exactly in requirements.txt")


@pytest.mark.parametrize(("package", "module"), [("requests", requests), ("urllib3", urllib3)])
def test_the_wire_runs_on_exactly_the_pinned_versions(package, module):
    assert module.__version__ == pinned(package), f"app/wire.py was written against {package}=={pinned(package)}"


def test_http_client_keeps_header_lines_in_buffer_and_sends_them_with_send_output():
    connection = http.client.HTTPConnection("localhost")
    assert isinstance(connection._buffer, list)
    assert callable(connection._send_output)


def test_urllib3_responses_expose_http_clients_response_and_its_buffered_reader():
    sock_a, sock_b = socket.socketpair()
    try:
        sock_b.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        raw = http.client.HTTPResponse(sock_a)
        raw.begin()
        response = urllib3.HTTPResponse(
            body=raw, headers=dict(raw.getheaders()), status=raw.status, preload_content=False
        )
        assert response._fp is raw
        assert hasattr(raw, "fp") and callable(raw.fp.read1)
        assert isinstance(raw.fp.raw._sock, socket.socket)
        assert callable(raw._close_conn)
        for name in ("chunked", "length_remaining", "connection", "release_conn"):
            assert hasattr(response, name), name
        response.close()
    finally:
        sock_a.close()
        sock_b.close()


def test_gevents_socket_wraps_a_c_level_socket_in_sock():
    sock = gevent.socket.socket()
    try:
        assert isinstance(sock._sock, _socket.socket)
    finally:
        sock.close()


def test_requests_adapter_has_the_hooks_the_lean_pools_plug_into():
    adapter = HTTPAdapter()
    for name in ("build_connection_pool_key_attributes", "init_poolmanager", "build_response"):
        assert callable(getattr(adapter, name)), name
    assert isinstance(adapter.poolmanager.pool_classes_by_scheme, dict)
