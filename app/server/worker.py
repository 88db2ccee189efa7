"""The gunicorn worker: gevent's, answering malformed requests with OpenAI JSON, writing with
fewer system calls, surviving config files that are being edited, taking turns fairly between
requests, spreading connections evenly over the workers (app/server/balance.py), and answering
every connection the kernel had completed when it stops.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import struct
import sys
import time
from datetime import timedelta
from http import HTTPStatus
from typing import ClassVar

import gevent
from gevent.baseserver import _handle_and_close_when_done
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import errors, wsgi
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from app.server.balance import Balance
from app.sse import LastBytes

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

    The head leaves with the first body bytes in one write, not in a write of its own; a stream's
    last bytes (``LastBytes``) take the end of the chunked body with them; and each write is one
    ``send`` (``sendall`` only for what a full socket buffer left over), because
    gevent's ``sendall`` also asks the kernel for the send-buffer size on every call.
    """

    _holding = False
    _held: bytes | None = None
    _ended = False  # the chunked body's last chunk went out with LastBytes

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
        if self._ended:
            return  # nothing may follow the body's end (LastBytes promised there was nothing)
        if self.chunked:
            if type(data) is LastBytes:
                self._ended = True
                data = b"%X\r\n%b\r\n0\r\n\r\n" % (len(data), data)  # and the last chunk
            else:
                data = b"%X\r\n%b\r\n" % (len(data), data)
        if self._held is not None:
            data, self._held = self._held + data, None
        self._send(data)

    def close(self) -> None:
        self.req.router_streamed = self.chunked  # read by RouterWorker.handle_request
        if self.headers_sent and self.chunked:
            if not self._ended:
                self._send(b"0\r\n\r\n")  # the last chunk
        else:
            super().close()

    def _send(self, data: bytes) -> None:
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])


# How long a connection steps aside after each answer (any value above 0: a timer, not a callback,
# so the event loop polls before the connection's greenlet runs again).
_TURN_SECONDS = 1e-6


def _queued(listener, at_least: int = 1) -> int:
    """Connections waiting in a TCP listening socket's accept queue (``at_least`` when unknown)."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except OSError:  # not TCP (a unix socket)
        return at_least
    # struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked; for a
    # listening socket Linux reports its accept-queue length as unacked.
    return max(struct.unpack_from("=I", info, 24)[0], at_least)


class _BalancedServer(StreamServer):
    """gevent's accepting server, leaving a new connection to a less loaded sibling worker first."""

    balance: Balance | None = None
    started_servers: ClassVar[list[_BalancedServer]] = []
    # More connections were waiting than the last accept took: only then does a finished whole
    # answer look at the queue (a system call), not after every answer.
    _backlog = False

    def start(self) -> None:
        super().start()
        _BalancedServer.started_servers.append(self)

    def admit_one(self) -> None:
        """A whole answer has been sent: take one waiting connection now if the balance allows,
        rather than at the accept watcher's next wake.

        With several workers gunicorn accepts one connection per event-loop iteration, so that one
        worker does not take a whole burst. That paces a burst of new streams well: between two
        starts (~1 ms each) the events of the streams already started go on flowing (500 streams
        at once: all incremental; taking 4 per iteration: 60%, 100: 1%). But a burst of keep-alive
        clients that send request after request makes every iteration long, and the last of 64
        new connections waited ~1.3 s for its first answer. Their whole answers end all the time:
        admitting one waiting connection per whole answer takes them in as fast as the worker
        serves (max 1.3 s -> 0.17 s at c=64), while a burst of streams is still paced."""
        if not self._backlog or self._watcher is None or self.balance is None:
            return
        waiting = _queued(self.socket, at_least=0)
        self._backlog = waiting > 1
        if waiting and not self.balance.accept_delay(waiting):
            super()._do_read()

    def _do_read(self) -> None:
        if self.balance is None:
            super()._do_read()
            return
        waiting = _queued(self.socket)
        self._backlog = waiting > 1
        wait = self.balance.accept_delay(waiting)
        if wait:
            # BaseServer's own back-off after an accept error works the same way: stop watching
            # the socket, and watch it again when the timer fires.
            self.stop_accepting()
            self._timer = self.loop.timer(wait)
            self._timer.start(self._start_accepting_if_started)
            return
        super()._do_read()  # at most max_accept connections: gunicorn's 1 with several workers

    def do_handle(self, *args) -> None:
        # Counted when accepted, not when its greenlet starts: the next accept decision sees it.
        if self.balance is not None:
            self.balance.opened()
        try:
            super().do_handle(*args)
        except BaseException:
            if self.balance is not None:
                self.balance.closed()
            raise

    def close(self) -> None:
        """Stop accepting, and answer the connections the kernel had already completed.

        Connections completed by the kernel but not yet accepted wait in the listening socket's
        queue, and the last close of the socket resets them: a client (nginx) that has already
        sent its request gets a reset it cannot safely retry, while a connection refused after
        the close is sent elsewhere. gevent notices SIGTERM up to a second late and accepts one
        connection per loop iteration, so under load several wait at that moment (2 to 6 resets
        per stop, measured). So the queue is emptied first, without a greenlet switch between the
        last accept and the close, and those connections are served like the others (each
        answer with ``Connection: close``, as the worker is stopping)."""
        if self.balance is not None:
            self.balance.serving(False)
        queued = []
        if not self.closed:
            while True:
                try:
                    accepted = self.do_read()  # a non-blocking accept: None once the queue is empty
                except OSError:
                    break
                if not accepted:
                    break
                queued.append(accepted)
        spawn, handle = getattr(self, "_spawn", None), getattr(self, "_handle", None)
        super().close()
        for accepted in queued:
            if self.balance is not None:
                self.balance.opened()  # the handler's end counts it closed again
            if spawn is None or handle is None:
                accepted[0].close()
            else:
                spawn(_handle_and_close_when_done, handle, self.do_close, accepted)


class _NamedListener:
    """A listening socket as a connection's handler sees it: its name outlives its close.

    gunicorn's handler asks the listening socket for its address when a connection's first
    request arrives; a connection accepted just before a stopping worker closed that socket
    would fail there (EBADF) and be reset without an answer."""

    __slots__ = ("_listener", "_name")

    def __init__(self, listener) -> None:
        self._listener = listener
        self._name = listener.getsockname()

    def getsockname(self):
        return self._name

    def __getattr__(self, name: str):
        return getattr(self._listener, name)


class RouterWorker(GeventWorker):
    """gunicorn's gevent worker with six changes: the answers gunicorn writes itself are OpenAI
    JSON, not HTML; a worker started after start-up waits for config files that load, rather than
    stopping the whole server (gunicorn halts when a worker cannot boot); responses are written
    with fewer system calls (``_OneWriteResponse``); after each answer a connection gives the
    other connections a turn before its next request (``handle_request``); connections are
    spread evenly over the workers (``configure``, app/server/balance.py); and a stopping worker
    serves the connections waiting in the listening socket's queue instead of resetting them
    (``_BalancedServer.close``, ``_NamedListener``).

    Loaded by the master: the app itself is imported only in the worker (``load_wsgi``), after
    gevent's patching.
    """

    # Set in the master by gunicorn.conf.py (BALANCE_CONNECTIONS, BALANCE_ACCEPT_WAIT), before
    # any worker forks; ``balance_slot`` is each worker's, given by the pre_fork hook.
    balance_connections = False
    balance_accept_wait = 0.1
    balance_slot: int | None = None

    @classmethod
    def configure(cls, *, balance_connections: bool, balance_accept_wait: float) -> None:
        cls.balance_connections = balance_connections
        cls.balance_accept_wait = balance_accept_wait

    def init_process(self) -> None:
        # gunicorn's request handler builds its responses through wsgi.create, which takes the
        # module's Response class; this worker process writes with the leaner one. Likewise
        # GeventWorker.run builds its servers from the module's StreamServer.
        wsgi.Response = _OneWriteResponse
        slot = self.balance_slot if self.balance_connections else None
        self._balance = Balance(slot, self.balance_accept_wait)
        _BalancedServer.balance = self._balance if slot is not None else None
        ggevent.StreamServer = _BalancedServer
        super().init_process()

    def run(self) -> None:
        self._listeners = {id(listener): _NamedListener(listener) for listener in self.sockets}
        self._balance.serving(True)
        super().run()

    def handle(self, listener, client, addr) -> None:
        try:
            super().handle(self._listeners.get(id(listener), listener), client, addr)
        finally:
            if _BalancedServer.balance is not None:
                self._balance.closed()  # counted as opened by _BalancedServer.do_handle

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
        if self._balance.should_shed():
            req.must_close = True  # answered with Connection: close; the client reconnects elsewhere
        try:
            super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # The app bounds every write by CLIENT_SEND_TIMEOUT and has already closed the stream
            # and its vendor request: a client that stopped reading is routine, not a traceback.
            self.log.info("client %s accepted no bytes for CLIENT_SEND_TIMEOUT; connection closed", addr)
            raise OSError(errno.EPIPE, "client send timeout") from None
        finally:
            if not getattr(req, "router_streamed", True):
                for server in _BalancedServer.started_servers:
                    server.admit_one()
        # The connection stays open. gevent never preempts: when the client's next request and the
        # vendor's answer are already there each time this greenlet reads (both run on other
        # cores and answer faster than the router finishes a call), the greenlet serves request
        # after request without the event loop ever polling, and every other connection of this
        # worker waits (measured at c=64 on one saturated worker: p50 1 ms, p90 600 ms). And a
        # greenlet that reads its connection's next request at once runs ahead of connections
        # that were ready before it. So after each answer the connection steps aside until the
        # loop has polled: every connection gets one turn per turn of the loop. (Stepping aside
        # only when a request never waited left p99 at c=64 at 112-116 ms; after every answer
        # 98 ms, c=16 27.5 -> 21 ms, calls/s unchanged.)
        gevent.sleep(_TURN_SECONDS)

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
