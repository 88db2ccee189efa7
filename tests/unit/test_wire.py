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

from app.wire import _LeanHTTPConnection, read_first

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


def test_gevents_socket_keeps_its_read_watcher_in_read_event_with_a_priority():
    sock = gevent.socket.socket()
    try:
        sock._read_event.priority = 1
        assert sock._read_event.priority == 1
    finally:
        sock.close()


def resumed(upstream_first: bool, client_ready_first: bool) -> list[str]:
    """The order in which three greenlets resume when all are ready in one turn of the event loop,
    as in a loaded worker: one stepping aside on a 1 us timer before its connection's next request
    (app/server/worker.py), one reading a client's socket, one an upstream's."""
    client, client_peer = gevent.socket.socketpair()
    upstream, upstream_peer = gevent.socket.socketpair()
    if upstream_first:
        read_first(upstream)
    order: list[str] = []
    waiting = [
        gevent.spawn(lambda: (client.recv(1), order.append("client"))),
        gevent.spawn(lambda: (upstream.recv(1), order.append("upstream"))),
    ]
    gevent.sleep(0)  # both read now
    waiting.append(gevent.spawn(lambda: (gevent.sleep(1e-6), order.append("turn"))))
    for peer in (client_peer, upstream_peer) if client_ready_first else (upstream_peer, client_peer):
        peer.send(b"x")
    gevent.joinall(waiting, timeout=5)
    for sock in (client, client_peer, upstream, upstream_peer):
        sock.close()
    return order


def test_an_upstream_read_resumes_before_turns_and_client_reads_ready_in_the_same_turn():
    for client_ready_first in (True, False) * 3:
        # libev queues a turn's ready sockets, then its expired timers, and runs the queue from
        # its end: a connection's turn (its next request) came before a call's awaited answer.
        assert resumed(False, client_ready_first)[0] != "upstream"
        assert resumed(True, client_ready_first)[0] == "upstream"


def test_a_lean_vendor_connection_reads_first(monkeypatch):
    # urllib3 opens its sockets through its own module's ``socket``: gevent's here, as in a worker.
    monkeypatch.setattr(urllib3.util.connection, "socket", gevent.socket)
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    connection = _LeanHTTPConnection("127.0.0.1", listener.getsockname()[1])
    try:
        connection.connect()
        assert connection.sock._read_event.priority > 0
    finally:
        connection.close()
        listener.close()


def test_requests_adapter_has_the_hooks_the_lean_pools_plug_into():
    adapter = HTTPAdapter()
    for name in ("build_connection_pool_key_attributes", "init_poolmanager", "build_response"):
        assert callable(getattr(adapter, name)), name
    assert isinstance(adapter.poolmanager.pool_classes_by_scheme, dict)


HEADER_BLOCKS = [
    b"Content-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n",
    b"content-type:text/event-stream\r\nx-request-id:  abc \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
    b"Date: Mon, 07 Dec 2026 06:00:00 GMT\r\nEmpty:\r\nX-Tab:\tvalue\twith tab\r\n\r\n",
    b"X-Latin: caf\xe9\r\nServer: fake\n\n",
    # Not plain: a folded (continued) line, a line without a colon, a name with a space.
    b"X-Folded: first\r\n second part\r\nServer: fake\r\n\r\n",
    b"Server: fake\r\nno colon here\r\nX-After: 1\r\n\r\n",
    b"Bad Name: value\r\nServer: fake\r\n\r\n",
    b"\r\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_vendor_response_headers_parse_as_the_standard_library_parses_them(block):
    import email.parser
    import io

    import app.wire  # noqa: F401 -- installs its header parser

    ours = http.client.parse_headers(io.BytesIO(block + b"the body"))
    lines = block.decode("iso-8859-1")
    theirs = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(lines)
    assert http.client.parse_headers.__module__ == "app.wire"
    assert ours.items() == theirs.items()
    assert ours.get_all("Set-Cookie") == theirs.get_all("Set-Cookie")
    assert [type(defect) for defect in ours.defects] == [type(defect) for defect in theirs.defects]
    assert ours.get_payload() == theirs.get_payload() or not (ours.get_payload() or theirs.get_payload())


def test_header_limits_of_http_client_still_apply():
    import io

    import app.wire  # noqa: F401 -- installs its header parser

    with pytest.raises(http.client.LineTooLong):
        http.client.parse_headers(io.BytesIO(b"X-Long: " + b"a" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        http.client.parse_headers(io.BytesIO(b"X: 1\r\n" * 200 + b"\r\n"))
