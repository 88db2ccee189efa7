"""A vendor written inline by a test: a thread-served HTTP/1.1 server whose POSTs one function answers.

For what the fake vendor has no behaviour for (a body it could never send, a timing it cannot
make); the test's ``answer(handler)`` writes status, headers and body with http.server's handler
(``handler.body`` holds the request's body).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["ScriptedVendor", "send_whole"]


class ScriptedVendor:
    """Serves ``answer`` on 127.0.0.1 at ``url`` (an OpenAI-style base URL); ``calls`` counts POSTs."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.calls = 0
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.body = self.rfile.read(int(self.headers["Content-Length"]))
                vendor.calls += 1
                answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_whole(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    """Answer with ``body`` whole, framed by Content-Length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
