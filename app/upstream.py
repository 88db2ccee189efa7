"""The vendor HTTP client: one pooled requests transport adapter per worker, timeouts, auth.

Nothing Flask lives here, and nothing above this module touches ``requests``: a call returns a
``VendorResponse`` that owns the HTTP response, and every transport failure, when sending or
reading, is mapped in one place (``_mapped``) to an ``UpstreamError`` or ``UpstreamTimeout``
whose message names the vendor and model and never a key or URL (requests' own exception text
contains the full URL, so it is never passed on).
"""

from __future__ import annotations

import _socket
import contextlib
import email.utils
import logging
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from app.catalog import Combination, Credential, Vendor
from app.errors import UpstreamError, UpstreamTimeout

__all__ = ["USER_AGENT", "Upstream", "VendorResponse"]

USER_AGENT = "generative-api-router/1.0"
# Bytes asked of the socket per stream read: one read returns whatever has arrived, up to this.
READ_SIZE = 65536
# How much of a vendor's error body is read: error bodies are small; a huge one is not an error.
MAX_ERROR_BODY = 64 * 1024
# The largest whole answer accepted: a vendor (or what stands in its place) sending without end
# must not exhaust a worker's memory. Real completions and embeddings are far smaller.
MAX_ANSWER_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


# Header lines as http.client encodes and checks them (two regular expressions per header),
# kept for the router's own few headers: host, auth per credential, content type, accept...
_header_lines: dict[tuple[str, tuple[Any, ...]], bytes] = {}
_HEADER_LINES_KEPT = 256  # a bound, in case a deployment has very many credentials
_UNCACHED_HEADERS = frozenset({"Content-Length"})  # a new value nearly every call


class _LeanConnection:
    """A urllib3 connection that spends fewer system calls per request (mixed into HTTP and HTTPS).

    The request's head and its body leave in one write instead of two; a write is one ``send``
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


class _Adapter(HTTPAdapter):
    """requests' transport adapter without the parts a router pays for on every call and never uses."""

    def __init__(self, **options: Any) -> None:
        self._pool_keys: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **options: Any) -> None:
        super().init_poolmanager(*args, **options)
        self.poolmanager.pool_classes_by_scheme = {"http": _LeanHTTPPool, "https": _LeanHTTPSPool}

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


def _went_silent() -> urllib3.exceptions.ReadTimeoutError:
    """The error urllib3 raises for a read timeout, which _mapped_error turns into the router's."""
    return urllib3.exceptions.ReadTimeoutError(None, "", "read timed out")  # type: ignore[arg-type]


class VendorResponse:
    """A vendor's answer to one call: status and headers at once, the body when asked; ``close`` frees it."""

    def __init__(self, combination: Combination, response: requests.Response, read_timeout: float) -> None:
        self.combination = combination
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._read_timeout = read_timeout
        self._stream: _SocketBody | None = None

    @property
    def retry_after(self) -> float | None:
        """Seconds from the Retry-After header (a number of seconds or an HTTP date), if any."""
        return parse_retry_after(self.headers.get("Retry-After"))

    def read_all(self) -> bytes:
        """The whole body (at most MAX_ANSWER_BYTES); the connection goes back to the pool."""
        try:
            with self._mapped("mid-answer"):
                # raw.read, not .content: one read instead of a generator of 10 kB pieces. Read to
                # the end, urllib3 hands the connection back to the pool by itself.
                body = self._response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
        finally:
            self._response.close()
        if len(body) > MAX_ANSWER_BYTES:
            limit = MAX_ANSWER_BYTES // (1024 * 1024)
            raise UpstreamError(self.combination.describe(f"sent an answer larger than {limit} MiB"))
        return body

    def read_error(self) -> bytes:
        """Up to MAX_ERROR_BODY bytes of an error answer's body (b"" if it breaks off); closes it."""
        try:
            return self._response.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return b""  # the status alone still says what went wrong
        finally:
            self._response.close()

    def read_some(self, within: float | None = None) -> bytes | None:
        """The next bytes of a streamed body as soon as any arrive; b"" at its end; None if none
        arrived within ``within`` seconds (the stream goes on: ask again)."""
        stream = self._stream
        if stream is None:
            stream = self._stream = _SocketBody.over(self._response.raw, self._read_timeout)
        try:
            if stream is not None:
                return stream.read(within)
            # No socket to read from directly (a compressed body, or a response made in tests).
            return self._response.raw.read1(READ_SIZE, decode_content=True)
        except Exception as exc:
            raise _mapped_error(exc, self.combination, "mid-stream", self._read_timeout) or exc from None

    def allow_silence(self, seconds: float) -> None:
        """From now on, let the vendor be silent up to ``seconds`` between bytes."""
        self._read_timeout = seconds
        if self._stream is not None:
            self._stream.allow_silence(seconds)
        connection = getattr(self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)

    def close(self) -> None:
        """Close the connection (a vendor mid-answer sees it closed). Idempotent."""
        self._response.close()

    def _mapped(self, where: str) -> contextlib.AbstractContextManager[None]:
        return _mapped(self.combination, where, self._read_timeout)


class _SocketBody:
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
    def over(cls, raw: Any, read_timeout: float) -> _SocketBody | None:
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
                    raise urllib3.exceptions.ProtocolError("the connection closed before the body ended")
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
                raise _went_silent() from None
        # The vendor may be silent for the read timeout in all, however many bounded reads that spans.
        wait = self._last_bytes + self._read_timeout - time.monotonic()
        if within is not None and within < wait:
            self._sock.settimeout(max(within, 0.0))
            try:
                return self._sock.recv(READ_SIZE)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: nothing there, and no time to wait
                return None
        if wait <= 0:
            raise _went_silent()
        self._sock.settimeout(wait)
        try:
            return self._sock.recv(READ_SIZE)
        except TimeoutError:
            raise _went_silent() from None

    def _decode(self, data: bytes) -> bytes:
        """The payload in ``data``; the framing state carries over to the next read."""
        if not self._chunked:
            if self._left is not None:
                if len(data) > self._left:
                    raise urllib3.exceptions.ProtocolError("more bytes than the Content-Length")
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
                    raise urllib3.exceptions.ProtocolError("a chunk did not end with CRLF")
                pos += 2
                self._state = self._SIZE
            elif state in (self._SIZE, self._TRAILER):
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    if end - pos > 4096:
                        raise urllib3.exceptions.ProtocolError("a chunk-size line is too long")
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
                    raise urllib3.exceptions.ProtocolError("a chunk size is not a number") from None
                if size < 0:
                    raise urllib3.exceptions.ProtocolError("a chunk size is negative")
                if size:
                    self._left, self._state = size, self._DATA
                else:
                    self._state = self._TRAILER
            else:
                break
        if pos < end:
            if self._state == self._END:
                raise urllib3.exceptions.ProtocolError("bytes after the end of the body")
            self._pending = data[pos:]
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _release(self) -> None:
        """The body ended cleanly: mark http.client's response read and pool the connection."""
        # http.client's own end-of-body step; a new request on this connection checks it.
        self._raw._fp._close_conn()
        self._raw.release_conn()


class Upstream:
    """Sends requests to vendors; each call returns a ``VendorResponse`` with its body unread."""

    def __init__(
        self,
        vendors: Mapping[str, Vendor],
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
        ca_bundle: str | None = None,
    ) -> None:
        # requests' transport adapter, called directly with a ready request: Session.request would
        # merge settings, prepare, run hooks and extract cookies on every call (~80 us each), and
        # its shared cookie jar would carry one tenant's Set-Cookie into the next tenant's call.
        # The adapter keeps no cookies and never follows redirects.
        self._adapter = _Adapter(pool_connections=max(len(vendors), 1), pool_maxsize=pool_size, max_retries=0)
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # The adapter alone ignores REQUESTS_CA_BUNDLE (a Session would read it): behind a
        # TLS-inspecting egress proxy the operator's CA bundle is the only way to reach a vendor.
        self._verify: bool | str = ca_bundle or True
        # Proxy variables (HTTPS_PROXY, NO_PROXY) are read once per vendor, not on every call.
        self._proxies = {name: get_environ_proxies(vendor.base_url + "/") for name, vendor in vendors.items()}
        self._headers: dict[tuple[str, bool], dict[str, str]] = {}

    def post(
        self,
        combination: Combination,
        url: str,
        body: bytes,
        *,
        stream: bool,
        read_timeout: float | None = None,
    ) -> VendorResponse:
        """POST ``body`` to ``url`` of the combination's vendor; the answer's body is left unread.

        ``read_timeout`` (default: the configured one) bounds the wait for the answer's first
        byte and every later gap between bytes.
        """
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = url
        # A plain dict: the headers are the router's own, spelled one way; nothing looks them up
        # in another case on the way out.
        request.headers = {**self._headers_for(combination.credential, stream), "Content-Length": str(len(body))}  # type: ignore[assignment]
        request.body = body
        with _mapped(combination, "before answering", read_timeout, self._connect_timeout):
            response = self._adapter.send(
                request,
                stream=True,
                timeout=(self._connect_timeout, read_timeout),
                verify=self._verify,
                proxies=self._proxies[combination.vendor.name],
            )
        return VendorResponse(combination, response, read_timeout)

    def _headers_for(self, credential: Credential, stream: bool) -> dict[str, str]:
        """The router's own headers for one key (built once): never anything from the client."""
        key = (credential.label, stream)
        headers = self._headers.get(key)
        if headers is None:
            headers = {
                "Authorization": f"Bearer {credential.secret}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
                "User-Agent": USER_AGENT,
                # A compressed event stream would be held back by the decompressor's buffering.
                "Accept-Encoding": "identity" if stream else "gzip, deflate",
            }
            self._headers[key] = headers
        return headers


@contextlib.contextmanager
def _mapped(
    combination: Combination,
    where: str,
    read_timeout: float,
    connect_timeout: float | None = None,
) -> Iterator[None]:
    """Transport failures inside the block raised as the router's errors (see _mapped_error)."""
    try:
        yield
    except Exception as exc:
        raise _mapped_error(exc, combination, where, read_timeout, connect_timeout) or exc from None


def _mapped_error(
    exc: Exception,
    combination: Combination,
    where: str,
    read_timeout: float,
    connect_timeout: float | None = None,
) -> UpstreamError | None:
    """The one translation of transport failures, when sending or reading, into the router's
    errors; None for anything else (a bug, raised as it is)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return UpstreamTimeout(combination.describe(f"could not be reached within {connect_timeout:g} s"))
    if isinstance(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        silent = "sent no answer within" if where == "before answering" else "went silent for"
        return UpstreamTimeout(combination.describe(f"{silent} {read_timeout:g} s{_suffix(where)}"))
    if isinstance(exc, requests.exceptions.SSLError):
        return UpstreamError(combination.describe("failed the TLS handshake"))
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UpstreamError(combination.describe(_connection_problem(exc)))
    if isinstance(exc, requests.exceptions.RequestException):
        return UpstreamError(combination.describe(f"could not be called ({type(exc).__name__})"))
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, ValueError)):
        # Reading a body: ProtocolError (connection dropped, broken chunk framing), DecodeError,
        # and ValueError from reading a response that another greenlet just closed.
        return UpstreamError(combination.describe(f"dropped the connection {where}"))
    return None


def _suffix(where: str) -> str:
    return "" if where == "before answering" else f" {where}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None


def _connection_problem(exc: requests.exceptions.ConnectionError) -> str:
    if _caused_by(exc, ConnectionRefusedError):
        return "refused the connection"
    if _caused_by(exc, urllib3.exceptions.NameResolutionError):
        return "could not be resolved (DNS)"
    if _caused_by(exc, urllib3.exceptions.ProtocolError) or _caused_by(exc, ConnectionResetError):
        return "closed the connection without answering"
    return "could not be reached"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the chain of causes and arguments requests wraps around."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return False
