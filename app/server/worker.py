"""The gunicorn worker: gevent's, answering malformed requests with OpenAI JSON, writing with
fewer system calls, and surviving config files that are being edited.
"""

from __future__ import annotations

import errno
import json
import ssl
import sys
import time
from datetime import timedelta
from http import HTTPStatus

from gunicorn import util
from gunicorn.http import errors, wsgi
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["RouterWorker"]

# Requests gunicorn refuses before the app sees them: (exception, status, OpenAI error code, what is
# wrong). The first match wins; gunicorn's own words about the request follow in the message.
_REFUSALS = (
    (errors.LimitRequestLine, 414, "request_line_too_long", "The request line is too long"),
    (errors.LimitRequestHeaders, 431, "request_headers_too_large", "The request headers are too large"),
    (errors.UnsupportedTransferCoding, 501, "unsupported_transfer_coding", "The transfer coding is not supported"),
    (errors.ExpectationFailed, 417, "expectation_failed", "The Expect header cannot be met"),
    (errors.InvalidRequestLine, 400, "invalid_request_line", "The request line is malformed"),
    (errors.InvalidRequestMethod, 400, "invalid_method", "The request method is malformed"),
    (errors.InvalidHTTPVersion, 400, "invalid_http_version", "The HTTP version is not supported"),
    (
        (errors.InvalidHeader, errors.InvalidHeaderName, errors.ObsoleteFolding, errors.InvalidSchemeHeaders),
        400,
        "invalid_header",
        "A request header is malformed",
    ),
    (
        (errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension),
        400,
        "invalid_chunked_body",
        "The chunked request body is malformed",
    ),
    (errors.ForbiddenProxyRequest, 403, "forbidden", "The request is forbidden"),
    (ssl.SSLError, 403, "tls_error", "The TLS connection failed"),
    (errors.ParseException, 400, "malformed_request", "The request is malformed"),
)
# Failures that are the server's, not the client's: a response header the app made, a gunicorn
# setting that does not fit the request.
_SERVER_FAULTS = (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName, errors.ConfigurationProblem)
_SERVER_ERROR = "The server had an error while processing your request."


def _refusal(exc: BaseException) -> tuple[int, dict] | None:
    """The status and OpenAI error object for a request gunicorn refuses; None for the server's faults."""
    if isinstance(exc, _SERVER_FAULTS):
        return None
    for kinds, status, code, what in _REFUSALS:
        if isinstance(exc, kinds):
            error = {"message": f"{what}: {exc}", "type": "invalid_request_error", "param": None, "code": code}
            return status, error
    return None


# How often a worker that cannot load the config files tries again.
_CONFIG_RETRY_SECONDS = 5


class _OneWriteResponse(Response):
    """gunicorn's response, with fewer system calls per response and per stream event.

    The head leaves with the first body bytes in one write, not in a write of its own; and each
    write is one ``send`` (``sendall`` only for what a full socket buffer left over), because
    gevent's ``sendall`` also asks the kernel for the send-buffer size on every call.
    """

    _holding = False
    _held: bytes | None = None

    def write(self, arg) -> None:
        self._holding = True  # send_headers (called first by write) keeps the head for _emit_body
        try:
            super().write(arg)
        finally:
            self._holding = False
            if self._held is not None:  # no body bytes went out (e.g. a HEAD answer): the head alone
                head, self._held = self._held, None
                self._send(head)

    def send_headers(self) -> None:
        if self.headers_sent or not self._holding:
            super().send_headers()
            return
        tosend = self.default_headers()
        tosend.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._held = ("".join(tosend) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        if self.chunked:
            data = b"%X\r\n%b\r\n" % (len(data), data)
        if self._held is not None:
            data, self._held = self._held + data, None
        self._send(data)

    def close(self) -> None:
        if self.headers_sent and self.chunked:
            self._send(b"0\r\n\r\n")  # the last chunk
        else:
            super().close()

    def _send(self, data: bytes) -> None:
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])


class RouterWorker(GeventWorker):
    """gunicorn's gevent worker with three changes: the answers gunicorn writes itself are OpenAI
    JSON, not HTML; a worker started after start-up waits for config files that load, rather than
    stopping the whole server (gunicorn halts when a worker cannot boot); and responses are
    written with fewer system calls (``_OneWriteResponse``).

    Loaded by the master: the app itself is imported only in the worker (``load_wsgi``), after
    gevent's patching.
    """

    def init_process(self) -> None:
        # gunicorn's request handler builds its responses through wsgi.create, which takes the
        # module's Response class; this worker process writes with the leaner one.
        wsgi.Response = _OneWriteResponse
        super().init_process()

    def load_wsgi(self) -> None:
        # Start-up's own workers (the first ``workers`` of them) still fail, so a router whose
        # config is broken from the start refuses to start. A later one (a restart after a crash
        # or a watchdog kill, while the files are being edited) keeps the server up and retries.
        waiting_for = None
        while True:
            try:
                super().load_wsgi()
            except Exception as exc:
                if self.age <= self.cfg.workers or not _is_config_error(exc):
                    raise
                if str(exc) != waiting_for:
                    waiting_for = str(exc)
                    self.log.error("worker %s waits for config files that load: %s", self.pid, exc)
                self._idle(_CONFIG_RETRY_SECONDS)
            else:
                if waiting_for is not None:
                    self.log.info("worker %s loaded the config files and serves", self.pid)
                return

    def _idle(self, seconds: float) -> None:
        """Wait, telling the master this worker is alive; leave if the master says stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.alive:
                sys.exit(0)
            self.notify()
            time.sleep(min(1.0, seconds))

    def handle_request(self, listener_name, req, sock, addr):
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # The app bounds every write by CLIENT_SEND_TIMEOUT and has already closed the stream
            # and its vendor request: a client that stopped reading is routine, not a traceback.
            self.log.info("client %s accepted no bytes for CLIENT_SEND_TIMEOUT; connection closed", addr)
            raise OSError(errno.EPIPE, "client send timeout") from None

    def handle_error(self, req, client, addr, exc) -> None:
        addr = addr or ("", -1)  # a unix socket has no peer address
        refusal = _refusal(exc)
        if refusal is None:
            self.log.exception("Error handling request %s %s", getattr(req, "method", "-"), getattr(req, "uri", "-"))
            status, error = 500, {"message": _SERVER_ERROR, "type": "server_error", "param": None, "code": None}
        else:
            status, error = refusal
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        reason = HTTPStatus(status).phrase
        body = json.dumps({"error": error}).encode()
        if req is None and isinstance(exc, errors.InvalidHeader):
            req = exc.req  # a header error may come with the request line already read
        if req is not None:
            self._log_access(req, client, addr, f"{status} {reason}", len(body))
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except Exception:
            self.log.debug("Failed to send error message.")

    def _log_access(self, req, client, addr, status: str, length: int) -> None:
        """gunicorn's access line for a refused request (written only when GUNICORN_ACCESS_LOG is set)."""
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
        response = Response(req, client, self.cfg)
        response.status, response.sent = status, length
        self.log.access(response, req, environ, timedelta(0))


def _is_config_error(exc: Exception) -> bool:
    """Whether ``exc`` is the app refusing its config files or settings (as check-config would)."""
    # Only ever called in a worker, after gevent's patching, where the app is being imported anyway.
    from app.catalog import ConfigError
    from app.settings import SettingsError

    return isinstance(exc, (ConfigError, SettingsError))
