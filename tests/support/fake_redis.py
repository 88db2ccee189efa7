"""A Redis stand-in on a loopback port that answers each command as a test scripts it.

For what a real redis-server will not do on demand: cut a reply in the middle, or answer every
command late. It speaks RESP2 as far as redis-py's connection set-up needs (``CLIENT SETINFO``
gets ``+OK``); every other command goes to ``answer``. Plain threads and sockets: under gevent's
monkey-patching they are greenlets and gevent sockets, so it also serves a ledger in a gevent
process.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import hiredis

__all__ = ["CLOSE", "FakeRedis"]

CLOSE = object()  # a piece of an answer: the connection is closed there


class FakeRedis:
    """Serves on ``port``; ``answer(command)`` returns the bytes to send back, None (send
    nothing), or a list of pieces: bytes, and ``CLOSE`` where the connection is to be closed.
    ``commands`` lists every command answered, in order."""

    def __init__(self, answer: Callable[[list[bytes]], Any]) -> None:
        self.answer = answer
        self.commands: list[list[bytes]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        reader = hiredis.Reader()
        with connection:
            while True:
                data = connection.recv(65536)
                if not data:
                    return
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    if command[0].upper() == b"CLIENT":
                        connection.sendall(b"+OK\r\n")
                        continue
                    self.commands.append(command)
                    reply = self.answer(command)
                    for piece in reply if isinstance(reply, list) else [reply]:
                        if piece is CLOSE:
                            return
                        if piece is not None:
                            connection.sendall(piece)

    def close(self) -> None:
        self._listener.close()
