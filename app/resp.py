"""A minimal Redis client for the one hot path that waits on Redis: a budget's reserve and settle.

Every budgeted call makes two Redis round trips (reserve before the vendor, settle after), so
their CPU cost is the cost of budgets. redis-py spends about 150 µs of CPU per command on a 2-core
machine (its connection pool, command packing and reply parsing in Python); one round trip on a
plain gevent socket costs about 20 µs. This client does only what the ledger needs: pooled
connections (TCP, TLS with ``rediss://``, or a unix socket), AUTH and SELECT from the URL (parsed
by redis-py's own parser, so the URL means what it means for the rate limits), EVALSHA with a
fall back to EVAL when Redis does not know the script, MGET, and RESP2 replies.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Sequence
from typing import Any

__all__ = ["RespClient", "RespError"]


class RespError(Exception):
    """Redis could not be reached, broke the protocol, or answered an error."""


def _pack(args: Sequence[bytes | str | int | float]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection:
    def __init__(self, options: dict[str, Any], timeout: float) -> None:
        path = options.get("path")
        try:
            if path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(path)
            else:
                sock = socket.create_connection((options.get("host", "localhost"), options.get("port", 6379)), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if options.get("connection_class") is not None and "SSL" in options["connection_class"].__name__:
                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=options.get("host"))
        except OSError as exc:
            raise RespError(f"cannot connect: {exc}") from None
        sock.settimeout(timeout)
        self._sock = sock
        self._buffer = bytearray()
        password, username = options.get("password"), options.get("username")
        if password:
            self.call(["AUTH", username, password] if username else ["AUTH", password])
        if options.get("db"):
            self.call(["SELECT", options["db"]])

    def call(self, args: Sequence[bytes | str | int | float]) -> Any:
        """Send one command and return its reply; a Redis error reply raises RespError."""
        try:
            self._sock.sendall(_pack(args))
            reply = self._reply()
        except OSError as exc:
            raise RespError(f"connection failed: {type(exc).__name__}") from None
        if isinstance(reply, RespError):
            raise reply
        return reply

    def close(self) -> None:
        self._sock.close()

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            self._fill()

    def _fill(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionResetError("Redis closed the connection")
        self._buffer += data

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self._buffer) < size + 2:
                self._fill()
            value = bytes(self._buffer[:size])
            del self._buffer[: size + 2]
            return value
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OSError(f"unexpected reply {line[:20]!r}")


class RespClient:
    """A pool of connections to one Redis; ``call`` retries once on a fresh connection, so a
    pooled connection that Redis closed (a restart) costs no error."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        from redis.connection import parse_url

        self._options = parse_url(url)
        self._timeout = timeout
        self._idle: list[_Connection] = []

    def call(self, *args: bytes | str | int | float) -> Any:
        for attempt in (1, 2):
            pooled = bool(self._idle)
            connection = self._idle.pop() if pooled else _Connection(self._options, self._timeout)
            try:
                reply = connection.call(args)
            except RespError as error:
                if str(error).startswith(("connection failed", "cannot connect")):
                    connection.close()
                    if pooled and attempt == 1:
                        continue  # a stale pooled connection: once more on a new one
                    raise
                self._idle.append(connection)  # an error reply: the connection is fine
                raise
            self._idle.append(connection)
            return reply
        raise AssertionError("unreachable")

    def script(self, source: str) -> _Script:
        return _Script(self, source)


class _Script:
    """A Lua script run by its digest (EVALSHA), sent whole once when Redis does not know it."""

    def __init__(self, client: RespClient, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 -- Redis names scripts by SHA-1

    def __call__(self, keys: Sequence[str], args: Sequence[bytes | str | int | float]) -> Any:
        try:
            return self._client.call("EVALSHA", self._sha, len(keys), *keys, *args)
        except RespError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return self._client.call("EVAL", self._source, len(keys), *keys, *args)
