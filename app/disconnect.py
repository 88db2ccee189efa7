"""Noticing that a client closed its connection while the router is still working for it.

A WSGI app only learns of a departed client when a write fails, which for a vendor that thinks
for a minute is a minute of tokens burned for nobody. Instead, the client's socket is watched for
readability: once its request is read, the only thing that can make it readable is the client
closing it (EOF), resetting it, or a pipelined next request. The check peeks, so it never
consumes a byte.

An EOF alone cannot tell a closed connection from a half-closed one (a client that shut down its
sending side after its request, HTTP/1.0 style, and still waits for the answer). A client that
announced it sends nothing more (HTTP/1.0 without keep-alive, or ``Connection: close``) may
half-close, so only a reset counts as gone for it; for a keep-alive client an EOF means gone.
"""

from __future__ import annotations

import _socket
import socket
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["ClientWatch"]

_READ = 1  # libev/libuv event mask for "readable"


class ClientWatch:
    """Calls ``on_gone`` (in the gevent hub) once, if the client's connection closes while armed."""

    def __init__(self, client_socket: Any, may_half_close: bool = False) -> None:
        # gunicorn's gevent worker exposes the socket as environ["gunicorn.socket"]; other servers
        # (and Flask's test client) give none, and then nothing is watched. A gevent socket wraps
        # the C-level socket in ``_sock``, whose recv never waits: that one is used.
        self._client_socket = client_socket
        raw = getattr(client_socket, "_sock", client_socket)
        self._socket = raw if isinstance(raw, _socket.socket) else None
        self._watcher: Any = None
        self._may_half_close = may_half_close
        # Set while armed, cleared by disarm(): a callback scheduled before a disarm checks it.
        self.on_gone: Callable[[], None] | None = None

    def arm(self, on_gone: Callable[[], None]) -> None:
        """Start watching; ``on_gone`` runs in the hub, so it must not block."""
        self.on_gone = on_gone
        if self._socket is None or self._watcher is not None:
            return
        try:
            self._watcher = gevent.get_hub().loop.io(self._socket.fileno(), _READ)
        except (OSError, ValueError):
            return  # the socket is already closed: the next write will tell
        self._watcher.start(self._readable)

    def disarm(self) -> None:
        """Stop watching. Idempotent."""
        self.on_gone = None
        self._stop()

    def _stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()

    def _readable(self) -> None:
        reset = False
        try:
            # The C-level recv, not gevent's: this runs in the hub and must not wait.
            peeked = self._socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            peeked, reset = b"", True
        # Either way there is nothing more to learn: EOF or a reset means gone (unless the client
        # may have only half-closed); data is a pipelined request.
        self._stop()
        gone = reset or (not peeked and not self._may_half_close)
        if gone and self.on_gone is not None:
            self.on_gone()

    def limit_sends(self, seconds: float) -> None:
        """Make a write the client accepts nothing of for ``seconds`` fail (the server then
        closes the connection, and with it the answer)."""
        if self._client_socket is not None:
            self._client_socket.settimeout(seconds)
