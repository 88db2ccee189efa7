"""A minimal HTTP/1.1 client for the load generators: just enough, and cheap.

Only what the router and the vendors send is understood: a status line, headers, and a body
framed by Content-Length, chunked encoding or the connection closing. ``Connection`` is a
blocking gevent connection (the gevent generators); ``parse_head`` and ``ChunkedDecoder`` also
serve the epoll stream client, which feeds them whatever each ``recv`` returned.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

from gevent import socket as gsocket

__all__ = ["ChunkedDecoder", "Connection", "HTTPError", "Head", "build_post", "parse_head"]

RECV_SIZE = 65536
MAX_HEAD = 65536


class HTTPError(Exception):
    """The server's answer could not be read as HTTP/1.1, or the connection ended early."""


def build_post(host: str, port: int, path: str, body: bytes, extra_headers: dict[str, str] | None = None) -> bytes:
    """The bytes of a keep-alive JSON POST request, built once and sent many times."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
        *(f"{name}: {value}" for name, value in (extra_headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Head:
    """A response's status and lower-cased headers."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close" and (self.chunked or self.length is not None)


def parse_head(raw: bytes) -> Head | None:
    """The status and headers of a response head (without its blank line); None for a 1xx answer."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPError(f"bad status line {lines[0][:60]!r}")
    status = int(parts[1])
    if 100 <= status < 200:
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Head(status, headers)


class ChunkedDecoder:
    """Undoes chunked transfer encoding incrementally: feed raw reads, get the body bytes they complete.

    Written for the common case of whole chunks per read (slices of immutable bytes, no copying
    buffer), since the stream client runs it for every event of 1,000 streams.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data = 0  # bytes of the current chunk still to come
        self._skip = 0  # bytes of the CRLF after a chunk still to come
        self._trailer = False  # past the last (zero-size) chunk
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n and not self.done:
            if self._data:
                take = min(self._data, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._data -= take
                if not self._data:
                    self._skip = 2
                continue
            if self._skip:
                step = min(self._skip, n - pos)
                pos += step
                self._skip -= step
                continue
            end = data.find(b"\r\n", pos)
            if end < 0:
                break
            if self._trailer:
                self.done = end == pos  # an empty line ends the trailer section
                pos = end + 2
                continue
            try:
                size = int(data[pos:end].split(b";", 1)[0], 16)
            except ValueError:
                raise HTTPError(f"bad chunk size line {data[pos:end][:40]!r}") from None
            pos = end + 2
            if size:
                self._data = size
            else:
                self._trailer = True
        if pos < n:
            self._buf = data[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def leftover(self) -> bytes:
        """Bytes read past the end of the body (the start of a pipelined next response)."""
        return self._buf


class Connection:
    """One keep-alive client connection with a read buffer."""

    def __init__(self, host: str, port: int, timeout: float | None = None) -> None:
        # A plain connect to an address literal: create_connection would call getaddrinfo, which
        # gevent runs in a thread pool, for every one of 1,000 connections.
        self.sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise HTTPError("connection closed by the server")
        return data

    def read_head(self) -> Head:
        """Read the status line and headers (a 1xx interim answer is skipped)."""
        while True:
            while b"\r\n\r\n" not in self._buf:
                if len(self._buf) > MAX_HEAD:
                    raise HTTPError("response head too large")
                self._buf += self._recv()
            raw, self._buf = self._buf.split(b"\r\n\r\n", 1)
            head = parse_head(raw)
            if head is not None:
                return head

    def read_body(self, head: Head) -> bytes:
        """The whole body of a response."""
        return b"".join(data for data, _ in self.iter_body(head))

    def iter_body(self, head: Head) -> Iterator[tuple[bytes, float]]:
        """(body bytes, time.perf_counter() of the read that brought them), read by read."""
        if head.chunked:
            decoder = ChunkedDecoder()
            if self._buf:
                data, self._buf = self._buf, b""
                yield decoder.feed(data), time.perf_counter()
            while not decoder.done:
                yield decoder.feed(self._recv()), time.perf_counter()
            # Bytes after the final chunk belong to the next response (none for our clients).
            self._buf = decoder.leftover
            return
        length = head.length
        if length is not None:
            while len(self._buf) < length:
                self._buf += self._recv()
            body, self._buf = self._buf[:length], self._buf[length:]
            yield body, time.perf_counter()
            return
        # No framing: the body ends when the server closes the connection.
        if self._buf:
            data, self._buf = self._buf, b""
            yield data, time.perf_counter()
        while data := self.sock.recv(RECV_SIZE):
            yield data, time.perf_counter()
