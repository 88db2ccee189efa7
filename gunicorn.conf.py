"""gunicorn settings for the router. Every value is read from the environment here, with its reason.

This file runs in the gunicorn master before any worker forks, so it imports only gunicorn (and
its gevent worker, which gunicorn loads in the master anyway): never the app, never requests,
which would then be imported before gevent's monkey-patching in every worker. Start:
``gunicorn -c gunicorn.conf.py wsgi:app``.
"""

import errno
import functools
import json
import logging
import multiprocessing
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from http import HTTPStatus

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import errors, wsgi
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.ggevent import GeventWorker


def _int(name: str, default: int, minimum: int = 0) -> int:
    value = os.environ.get(name, "").strip()
    try:
        number = int(value) if value else default
    except ValueError:
        raise SystemExit(f"{name} must be a whole number; got {value!r}") from None
    if number < minimum:
        raise SystemExit(f"{name} must be at least {minimum}; got {value!r}")
    return number


# All interfaces, so nginx or a container runtime can reach it; PORT as in the contract.
bind = f"0.0.0.0:{_int('PORT', 8082, minimum=1)}"

# gevent workers (worker_class, below): each handles many requests at once as greenlets, which is
# what a router that mostly waits on vendors needs. One per CPU by default; WEB_CONCURRENCY overrides.
workers = _int("WEB_CONCURRENCY", multiprocessing.cpu_count(), minimum=1)
# Requests (greenlets) one worker holds at once; open streams count. The app sizes its vendor
# connection pool from the same variable, so no pooled connection is thrown away under load.
worker_connections = _int("WORKER_CONNECTIONS", 1000, minimum=1)

# With gevent this is a watchdog for a worker whose event loop is blocked, not a request timeout:
# long streams are unaffected as long as the loop runs. Request time limits are
# the app's UPSTREAM_* settings.
timeout = _int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, SIGHUP reloads and worker restarts, running streams get this long to finish before
# the worker is killed: long enough for a typical completion.
graceful_timeout = _int("GRACEFUL_TIMEOUT", 120)
# Idle keep-alive connections are held this long. Short, because on SIGTERM or SIGHUP a worker
# waits for its idle connections as for running requests: with a long keep-alive every deploy
# would stall that long. nginx's upstream keepalive_timeout must be shorter (configs/nginx uses
# 4 s), so nginx closes an idle connection before gunicorn does and never reuses a closing one.
keepalive = _int("KEEPALIVE", 5)

# Never preload with gevent: modules imported before the fork miss monkey-patching.
preload_app = False
# gunicorn >= 25.1 opens a control socket at a fixed path by default; several instances on one
# machine would fight over it.
control_socket_disable = True

# The app writes one access line per request itself (with vendor, model, attempts, and the whole
# duration of streams), so gunicorn's own access log is off unless asked for.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").strip() or "info"
proc_name = "generative-api-router"


class _JSONLines(logging.Formatter):
    """gunicorn's own lines (start, workers, timeouts) in the shape of the app's JSON lines."""

    # A copy of the app's shape, not an import of it: importing app.logs would import the app
    # package, and with it requests, into the master.
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": "-",
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class _JSONLogger(Logger):
    """gunicorn's logger with its usual handlers (stderr, GUNICORN_ACCESS_LOG), writing JSON lines."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(_JSONLines())


# LOG_FORMAT=json: every line the process writes is a JSON object, gunicorn's too, so a log
# shipper never meets a line it cannot parse.
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    logger_class = _JSONLogger

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

    A class here rather than in app/: importing anything from the app package would import the
    app, Flask and requests into the master, before gevent patches the workers that fork from it.
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


worker_class = RouterWorker


def _is_config_error(exc: Exception) -> bool:
    """Whether ``exc`` is the app refusing its config files or settings (as check-config would)."""
    # Only ever called in a worker, after gevent's patching, where the app is being imported anyway.
    from app.catalog import ConfigError
    from app.settings import SettingsError

    return isinstance(exc, (ConfigError, SettingsError))


_OWN_METRICS_PREFIX = "router-metrics-"
# Prometheus multiprocess mode: workers write samples to files in this directory and /metrics
# adds them up. It must be in the environment before a worker imports prometheus_client, so it
# is set here, in the master, before the fork; a private temporary directory unless given.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_OWN_METRICS_PREFIX)


def on_starting(server):
    """Start from empty metric files: samples of a previous run's workers would be summed in."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def on_exit(server):
    """Remove the metrics directory this file created (never one the operator gave)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    parent, name = os.path.split(directory)
    if name.startswith(_OWN_METRICS_PREFIX) and parent == tempfile.gettempdir():
        shutil.rmtree(directory, ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (in-flight streams), keep its counters."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    """Make SIGHUP check the config files first, and refuse a reload the workers would not survive.

    gunicorn's reload forks new workers and stops the old ones at once, with no hook that can say
    no, and a new worker that cannot load the config halts the whole server. So the arbiter's reload
    is wrapped: a refused reload changes nothing, and the running workers keep their config.
    """
    reload = server.reload

    def checked_reload() -> None:
        problem = _config_problem()
        if problem is not None:
            server.log.error("reload refused, the workers keep serving the last good config: %s", problem)
            _count_reload("failed")
            return
        _count_reload("ok")
        reload()

    server.reload = checked_reload


# Loading the config takes a second or two; the master handles no signals meanwhile.
_CHECK_SECONDS = 60


def _config_problem() -> str | None:
    """check-config's message when the config files would not load now; None when they would."""
    # In a child process, which reads the same environment and files a new worker would: the
    # master must not import the app.
    command = [sys.executable, "-m", "app", "check-config"]
    try:
        check = subprocess.run(  # noqa: S603 -- a fixed command line
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_CHECK_SECONDS
        )
    except subprocess.TimeoutExpired:
        return f"check-config did not finish within {_CHECK_SECONDS} s"
    if check.returncode == 0:
        return None
    lines = check.stderr.strip().splitlines() or [f"check-config exited with {check.returncode}"]
    return lines[-1].removeprefix("config error: ")


def post_worker_init(worker):
    """Show the reload counter at 0 from the start: a missing series is no data, not zero, to an alert."""
    for result in ("ok", "failed"):
        _reloads_counter().labels(result)


def _count_reload(result: str) -> None:
    _reloads_counter().labels(result).inc()


@functools.cache
def _reloads_counter():
    # Imported on first use, like in child_exit: in the master that is the first reload, after the
    # first workers have forked; in a worker it is after gevent's patching.
    from prometheus_client import Counter

    return Counter(
        "router_config_reloads",
        "SIGHUP reloads, by result: ok (config checked, new workers started) or failed (config "
        "refused, the running workers kept the last good one).",
        ["result"],
        registry=None,
    )
