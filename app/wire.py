"""The wire under the vendor client: fewer system calls per request, and streamed bodies read
straight from the socket. Measured, this is most of what a call costs the router.

It relies on private attributes of the exact versions pinned in requirements.txt (requests,
urllib3, and the standard library's http.client); tests/unit/test_wire.py fails loudly when one
of them disappears, so an upgrade breaks a test, not production:

- ``http.client.HTTPConnection._buffer`` (the header lines not yet sent) and ``_send_output``
  (which sends them), to send a request's head and body in one write;
- ``urllib3.HTTPResponse._fp`` (http.client's response) with its ``fp`` (the buffered reader
  that may hold the first bytes of a body), that reader's ``raw._sock`` (the socket, still
  held there when http.client has let go of the connection's) and ``_close_conn()`` (its
  end-of-body step);
- ``urllib3.HTTPResponse.chunked``, ``length_remaining``, ``connection.sock`` and
  ``release_conn()``, to read a body from the socket and pool its connection afterwards;
- gevent's socket ``_sock`` (the C-level socket), for a non-blocking peek before reuse, and
  ``_read_event`` (its read watcher), whose priority ``read_first`` raises;
- ``requests.adapters.HTTPAdapter.build_connection_pool_key_attributes``, ``init_poolmanager``,
  ``poolmanager.pool_classes_by_scheme`` and ``build_response``, to plug the lean pools in;
- ``http.client.parse_headers`` (replaced, for every response this process reads) and
  ``_read_headers`` (the size-checked read of the header lines it builds on).

Failures leave as ``VendorSilent`` (no byte within the allowed time) or ``BodyBroken`` (the body
ended or framed wrongly); app/upstream.py maps them, with everything else, to the router's errors.
"""

from __future__ import annotations

import _socket
import email.parser
import http.client
import re
import socket
import time
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["READ_SIZE", "Adapter", "BodyBroken", "SocketBody", "VendorSilent", "read_first"]

# Bytes asked of the socket per stream read: one read returns whatever has arrived, up to this.
READ_SIZE = 65536
# libev's priority for reads from upstreams (its range is -2..2; every other watcher is at 0).
_UPSTREAM_PRIORITY = 1


class VendorSilent(TimeoutError):
    """No byte of the body arrived within the time the vendor was allowed to be silent."""


class BodyBroken(ConnectionError):
    """The body ended before it was complete, or its chunked framing is broken."""


# Header lines as http.client encodes and checks them (two regular expressions per header),
# kept for the router's own few headers: host, auth per credential, content type, accept...
_header_lines: dict[tuple[str, tuple[Any, ...]], bytes] = {}
_HEADER_LINES_KEPT = 256  # a bound, in case a deployment has very many credentials
_UNCACHED_HEADERS = frozenset({"Content-Length"})  # a new value nearly every call


# A header line as email's parser takes it for a header: a name of printable characters other than
# the colon, then the colon. Anything else (a continuation line, a "From " line, a line without a
# colon) is left to that parser, which the fast path below must agree with.
_PLAIN_HEADER_NAME = re.compile(r"[!-9;-~]+")


def _parse_headers(fp: Any, _class: type = http.client.HTTPMessage) -> http.client.HTTPMessage:
    """http.client's ``parse_headers`` without email's parser for plain header lines.

    http.client hands every response's header lines to ``email.parser.Parser``, a general MIME
    parser: about 6% of the router's CPU per whole call went there. Vendors send plain
    ``Name: value`` lines; those are stored as that parser stores them (compat32: the name as
    sent, the value without leading blanks or the line end). Any other line sends the whole block
    to the stdlib parser, so odd headers parse exactly as before."""
    lines = http.client._read_headers(fp)  # the stdlib's read, with its line and count limits
    message = _class()
    for line in lines:
        if line in (b"\r\n", b"\n", b""):
            return message
        name, colon, value = line.decode("iso-8859-1").partition(":")
        if not colon or _PLAIN_HEADER_NAME.fullmatch(name) is None:
            break
        message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
    return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))


http.client.parse_headers = _parse_headers  # HTTPResponse.begin looks it up on every response


def read_first(sock: Any) -> None:
    """Have the worker's event loop resume a greenlet reading ``sock`` before those reading
    ordinary sockets that became ready at the same time: for sockets to the router's upstreams
    (vendors, Redis), never to clients.

    A call ends with reads from upstreams (a vendor's answer, a stream's next event, Redis's
    reply). In a turn of the loop libev queues the ready sockets, then the expired timers, and
    runs the queue from its end: the timers on which answered connections step aside before
    their next request (app/server/worker.py) and new clients' reads came before the answers
    calls under way were waiting for, which then waited longer. Upstream reads first finish what
    was started before more starts. Measured (router alone, 2 workers, three rounds each): p99 at
    concurrency 64 103 -> 73 ms, at 16 21 -> 18 ms, calls/s unchanged. Plain sockets (no gevent)
    have no watcher, and gevent's libuv loop has no priorities: no-op there.
    """
    event = getattr(sock, "_read_event", None)
    if event is not None:
        event.priority = _UPSTREAM_PRIORITY  # libev allows it only while unused: a new socket's is


class _LeanConnection:
    """A urllib3 connection that spends fewer system calls per request (mixed into HTTP and HTTPS).

    Its reads come first in the worker's event loop (``read_first``). The request's head and
    its body leave in one write instead of two; a write is one ``send``
    (gevent's ``sendall`` asks the kernel for the send-buffer size each time); the check a
    pooled connection gets before reuse is one non-blocking peek instead of a poll; and header
    lines the router sends again and again are encoded and checked once.
    """

    _hold_head = False
    _head: bytes | None = None

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **options: Any) -> None:
        # Only a body of bytes is sent in one piece; then the head waits for it.
        self._hold_head = isinstance(body, bytes) and bool(body)
        try:
            super().request(method, url, body, headers, **options)  # type: ignore[misc]
        finally:
            self._hold_head, self._head = False, None

    def putheader(self, header: str, *values: Any) -> None:
        key = (header, values)
        line = _header_lines.get(key)
        if line is not None:
            self._buffer.append(line)  # type: ignore[attr-defined]
            return
        buffer = self._buffer  # type: ignore[attr-defined]
        before = len(buffer)
        super().putheader(header, *values)  # type: ignore[misc]
        if len(buffer) == before + 1 and header not in _UNCACHED_HEADERS and len(_header_lines) < _HEADER_LINES_KEPT:
            _header_lines[key] = buffer[-1]

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not self._hold_head or message_body is not None:
            super()._send_output(message_body, encode_chunked=encode_chunked)  # type: ignore[misc]
            return
        buffer = self._buffer  # type: ignore[attr-defined]  # http.client's header lines
        buffer.extend((b"", b""))
        self._head = b"\r\n".join(buffer)
        del buffer[:]

    def send(self, data: Any) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        sock = self.sock  # type: ignore[attr-defined]
        if sock is None or type(data) is not bytes:
            super().send(data)  # type: ignore[misc]  # connects first, or reads a file-like body
            return
        sent = sock.send(data)
        if sent < len(data):
            sock.sendall(memoryview(data)[sent:])

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        read_first(self.sock)  # type: ignore[attr-defined]

    @property
    def is_connected(self) -> bool:
        sock = self.sock  # type: ignore[attr-defined]
        raw = getattr(sock, "_sock", None)  # the C-level socket under gevent's
        if not isinstance(raw, _socket.socket):
            return super().is_connected  # type: ignore[misc]
        try:
            # Anything readable on an idle connection (its end, or bytes nobody asked for) means
            # it cannot carry a new request.
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False


class _LeanHTTPConnection(_LeanConnection, HTTPConnection):
    pass


class _LeanHTTPSConnection(_LeanConnection, HTTPSConnection):
    pass


class _LeanHTTPPool(HTTPConnectionPool):
    ConnectionCls = _LeanHTTPConnection


class _LeanHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _LeanHTTPSConnection


class Adapter(HTTPAdapter):
    """requests' transport adapter without the parts a router pays for on every call and never uses."""

    def __init__(self, **options: Any) -> None:
        self._pool_keys: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
        self._paths: dict[str, str] = {}  # vendor URL -> the path sent in the request line
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **options: Any) -> None:
        super().init_poolmanager(*args, **options)
        self.poolmanager.pool_classes_by_scheme = {"http": _LeanHTTPPool, "https": _LeanHTTPSPool}

    def get_connection_with_tls_context(
        self, request: requests.PreparedRequest, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        # Without a proxy, requests would still parse the URL on every call to look for one.
        try:
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        except ValueError as exc:
            raise requests.exceptions.InvalidURL(exc, request=request) from exc
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)

    def request_url(self, request: requests.PreparedRequest, proxies: Any) -> str:
        if proxies:
            return super().request_url(request, proxies)
        # The path of the vendor's URL, split once per URL instead of twice per call.
        path = self._paths.get(request.url)  # type: ignore[arg-type]
        if path is None:
            path = self._paths[request.url] = super().request_url(request, proxies)  # type: ignore[index]
        return path

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # The same few vendor URLs on every call: each parsed (and a CA bundle path checked on
        # disk) once.
        key = (request.url, verify, cert)
        found = self._pool_keys.get(key)
        if found is None:
            found = self._pool_keys[key] = super().build_connection_pool_key_attributes(request, verify, cert)
        return dict(found[0]), dict(found[1])

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        # Without extracting cookies (the router keeps none), guessing a text encoding, or
        # copying the headers: urllib3's are case-insensitive already.
        response = requests.Response()
        response.status_code = resp.status
        response.headers = resp.headers
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url  # type: ignore[assignment]
        response.request = req
        response.connection = self
        return response


class SocketBody:
    """A streamed body read straight from the vendor's socket, its chunked framing decoded here.

    Through urllib3 and http.client, one read of a chunked body is a dozen Python calls (chunk
    size line, data, CRLF, each through a buffer layer) and a timer; here it is one ``recv`` of
    whatever has arrived and a slice or two. A read may also wait a bounded time: a ``recv``
    that times out has consumed nothing, so the stream goes on (urllib3's reads cannot be
    interrupted without losing their place). Once the body has ended, the connection goes back
    to urllib3's pool as if urllib3 had read it.
    """

    _SIZE, _DATA, _CRLF, _TRAILER, _END = range(5)

    def __init__(self, raw: urllib3.HTTPResponse, sock: Any, read_timeout: float) -> None:
        self._raw = raw
        self._sock = sock
        self._read_timeout = read_timeout
        self._last_bytes = time.monotonic()
        self._chunked = raw.chunked
        self._left = 0 if self._chunked else raw.length_remaining  # None: the body ends with the connection
        self._state = self._SIZE if self._chunked else self._DATA if self._left != 0 else self._END
        self._pending = b""  # framing bytes not yet complete (a chunk-size line cut by a read)
        self._first = True

    def allow_silence(self, seconds: float) -> None:
        """Let the vendor be silent up to ``seconds`` between bytes from now on."""
        self._read_timeout = seconds

    @classmethod
    def over(cls, raw: Any, read_timeout: float) -> SocketBody | None:
        """A reader for ``raw`` (urllib3's response), or None if its body must go through urllib3."""
        if raw.headers.get("Content-Encoding", "identity").lower() != "identity":
            return None  # only urllib3 decompresses (streams ask for identity; a vendor may not obey)
        # http.client's buffered reader: it may hold the first bytes of the body.
        buffered = getattr(getattr(raw, "_fp", None), "fp", None)
        # The socket it reads from. Not the connection's: for an answer that ends with the
        # connection (Connection: close, a close-delimited stream) http.client has already let go
        # of the connection's socket (None there), and only its reader still holds it.
        sock = getattr(getattr(buffered, "raw", None), "_sock", None)
        if not isinstance(sock, socket.socket) or buffered is None:
            return None
        return cls(raw, sock, read_timeout)

    def read(self, within: float | None) -> bytes | None:
        while self._state != self._END:
            data = self._recv(within)
            if data is None:
                return None
            if not data:
                if self._chunked or self._left:
                    raise BodyBroken("the connection closed before the body ended")
                self._state = self._END
                break
            self._last_bytes = time.monotonic()
            payload = self._decode(data)
            if self._state == self._END:
                self._release()
            if payload:
                return payload
        return b""

    def _recv(self, within: float | None) -> bytes | None:
        if self._first:
            # What http.client buffered while reading the headers comes first (read1 returns all
            # of it: its buffer is smaller than READ_SIZE); only then is the socket read directly.
            self._first = False
            try:
                return self._raw._fp.fp.read1(READ_SIZE)
            except TimeoutError:
                raise VendorSilent from None
        # The vendor may be silent for the read timeout in all, however many bounded reads that spans.
        wait = self._last_bytes + self._read_timeout - time.monotonic()
        if within is not None and within < wait:
            self._sock.settimeout(max(within, 0.0))
            try:
                return self._sock.recv(READ_SIZE)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: nothing there, and no time to wait
                return None
        if wait <= 0:
            raise VendorSilent
        self._sock.settimeout(wait)
        try:
            return self._sock.recv(READ_SIZE)
        except TimeoutError:
            raise VendorSilent from None

    def _decode(self, data: bytes) -> bytes:
        """The payload in ``data``; the framing state carries over to the next read."""
        if not self._chunked:
            if self._left is not None:
                if len(data) > self._left:
                    raise BodyBroken("more bytes than the Content-Length")
                self._left -= len(data)
                if not self._left:
                    self._state = self._END
            return data
        if self._pending:
            data, self._pending = self._pending + data, b""
        parts: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == self._DATA:
                take = min(self._left, end - pos)
                parts.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self._CRLF
            elif state == self._CRLF:
                if end - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise BodyBroken("a chunk did not end with CRLF")
                pos += 2
                self._state = self._SIZE
            elif state in (self._SIZE, self._TRAILER):
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    if end - pos > 4096:
                        raise BodyBroken("a chunk-size line is too long")
                    break
                line, pos = data[pos:line_end], line_end + 2
                if state == self._TRAILER:
                    if not line:
                        self._state = self._END
                        break
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise BodyBroken("a chunk size is not a number") from None
                if size < 0:
                    raise BodyBroken("a chunk size is negative")
                if size:
                    self._left, self._state = size, self._DATA
                else:
                    self._state = self._TRAILER
            else:
                break
        if pos < end:
            if self._state == self._END:
                raise BodyBroken("bytes after the end of the body")
            self._pending = data[pos:]
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _release(self) -> None:
        """The body ended cleanly: mark http.client's response read and pool the connection."""
        # http.client's own end-of-body step; a new request on this connection checks it.
        self._raw._fp._close_conn()
        self._raw.release_conn()
