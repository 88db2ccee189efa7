"""The HTTP edge shared by every route: request ids, the access log line, requests per client, JSON errors.

Every error leaves as OpenAI-shaped JSON: the router's own (RouterError), Flask's and Werkzeug's
(404, 405, 413, ... which are HTML by default) and any unexpected exception (500, logged).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import gevent.monkey
import orjson
from flask import Flask, Response, current_app, g, request
from gunicorn.http.errors import ParseException
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from app.clients import client_name
from app.endpoint import ErrorShape
from app.errors import (
    ClientBodyTimeout,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RouterError,
    UnsupportedMediaType,
)
from app.logs import answered_by_var, budget_note_var, request_id_var
from app.metrics import RouterMetrics

__all__ = ["SESSION_HEADERS", "BodyDeadline", "error_response", "install_http_edge", "read_json_body"]

access_log = logging.getLogger("router.access")
log = logging.getLogger(__name__)

# A client's (or nginx's) X-Request-ID is kept only if it is short and plain: it goes into logs
# and headers, so nothing that could forge a log line or a header is accepted.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")
_CHAT_MIMETYPES = frozenset({"application/json"})
# Headers naming the client's session (an agent's conversation): shown on the access line, and
# what keeps a session on one combination (affinity). Claude Code's own name first.
SESSION_HEADERS = ("X-Claude-Code-Session-Id", "X-Session-Id")
# A request a vendor answered also names the attempt that did, and the tokens the vendor
# reported (see answered_by_var): the line's fields vary, its formats are made once per set.
_ACCESS_FORMATS: dict[tuple[str, ...], str] = {}


def is_api_path(path: str) -> bool:
    """Whether ``path`` is under /v1, the OpenAI-compatible API (keys, CORS and limits apply there)."""
    return path == "/v1" or path.startswith("/v1/")


def install_http_edge(app: Flask, metrics: RouterMetrics, error_shapes: dict[str, ErrorShape] | None = None) -> None:
    """Register the request-id hooks, the access log, the per-client count and the JSON error handlers.

    ``error_shapes`` maps a path prefix to how errors under it are shaped (default: OpenAI's).
    """
    app.extensions["error_shapes"] = dict(error_shapes or {})
    app.before_request(_begin)
    app.after_request(_end)

    @app.after_request
    def count_client_request(response: Response) -> Response:
        # Every /v1 request once, errors included (401s and 429s too, as the anonymous client).
        if is_api_path(request.path):
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            metrics.series(metrics.client_requests, client_name(), route, f"{response.status_code // 100}xx").inc()
        return response

    app.register_error_handler(RouterError, error_response)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)


def error_response(error: RouterError) -> Response:
    """The JSON answer for a RouterError in the shape of the endpoint asked: status, body, headers."""
    shape = _error_shape(current_app.extensions.get("error_shapes"), request.path)
    if shape is None:
        response = Response(orjson.dumps(error.body()), error.status, mimetype="application/json")
        response.headers.update(error.headers)
        return response
    status, body, headers = shape(error, g.get("request_id", "-"))
    response = Response(orjson.dumps(body), status, mimetype="application/json")
    response.headers.update(headers)
    return response


def _error_shape(shapes: dict[str, ErrorShape] | None, path: str) -> ErrorShape | None:
    """The shape of errors on ``path``: that of the endpoint it is under, if it has its own."""
    for prefix, shape in (shapes or {}).items():
        if path == prefix or path.startswith(prefix + "/"):
            return shape
    return None


def read_json_body() -> dict:
    """The request body as a JSON object; raises a RouterError (400, 413, 415) otherwise."""
    if request.mimetype not in _CHAT_MIMETYPES:
        got = request.mimetype or "none"
        raise UnsupportedMediaType(f"Content-Type must be application/json; got {got}.")
    try:
        raw = request.get_data(cache=False)  # raises RequestEntityTooLarge past MAX_CONTENT_LENGTH
    except ParseException as exc:
        # A broken chunked body is only found while reading it: the client's fault (gunicorn then
        # closes the connection, since where a next request would start is unknown).
        raise InvalidRequest(
            f"The request body could not be read: {type(exc).__name__}.", code="invalid_body"
        ) from None
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # A chunked body (no Content-Length) is cut at the limit by werkzeug, not refused.
        raise PayloadTooLarge("The request body is too large.")
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_json_kind(body)}.")
    return body


# The longest a request body the app did not read is waited for, to keep its connection.
_DISCARD_SECONDS = 5.0


class BodyDeadline:
    """WSGI middleware: a client gets ``seconds`` from the end of its headers to send its body.

    Every request passes here, before the client's key is checked: a body the app reads is
    bounded (408, ClientBodyTimeout), and so is one it never reads (a 401, a 404), which is
    discarded after the answer was sent, so that the connection can serve a next request, within
    what is left of the same time but at most _DISCARD_SECONDS (gunicorn itself would discard it
    bounded only by KEEPALIVE, 5 s by default). A read that runs out of time fails inside
    gunicorn's body reader, which then closes the connection: where a next request would start is
    unknown.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float) -> None:
        self._app = app
        self._seconds = seconds
        # Only a cooperative server's reads can be interrupted (and only its reads wait on a
        # client: in-process test clients hand over bodies that are already complete).
        self._on = gevent.monkey.is_module_patched("socket")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not self._on or (not chunked and (not length.isdigit() or int(length) == 0)):
            return self._app(environ, start_response)  # no body to wait for
        body = _DeadlineInput(environ["wsgi.input"], time.monotonic() + self._seconds, None if chunked else int(length))
        environ["wsgi.input"] = body
        answer = self._app(environ, start_response)
        if body.complete:
            return answer
        # Run by the server once the answer is written: the client reads its answer first.
        return ClosingIterator(answer, body.discard_rest)


class _DeadlineInput:
    """A request body stream whose reads fail with ClientBodyTimeout past a deadline."""

    def __init__(self, stream: Any, deadline: float, length: int | None) -> None:
        self._stream = stream
        self._deadline = deadline
        self._left = length  # None: chunked, complete once a read returns nothing
        self.complete = False
        self._failed = False

    def read(self, size: int | None = -1) -> bytes:
        return self._counted(self._bounded(self._stream.read, size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._counted(self._bounded(self._stream.readline, size))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def discard_rest(self) -> None:
        """Read what is left of the body and drop it, within the deadline (never raises)."""
        # A body nobody needs earns its sender no more time than an idle keep-alive connection.
        self._deadline = min(self._deadline, time.monotonic() + _DISCARD_SECONDS)
        try:
            while not self.complete and not self._failed and self.read(65536):
                pass
        except ClientBodyTimeout:
            pass  # gunicorn's reader failed, so the connection is closed instead of reused

    def _bounded(self, read: Callable[[Any], bytes], size: int | None) -> bytes:
        remaining = self._deadline - time.monotonic()
        if self._failed or remaining <= 0:
            self._failed = True
            raise _body_timeout()
        # The exception is an Exception, not gevent's Timeout (a BaseException): gunicorn's body
        # reader then marks itself failed, and closes the connection after the answer.
        try:
            with gevent.Timeout(remaining, _body_timeout()):
                return read(size)
        except ClientBodyTimeout:
            self._failed = True
            raise

    def _counted(self, data: bytes) -> bytes:
        if self._left is None:
            self.complete = not data
        else:
            self._left -= len(data)
            self.complete = self._left <= 0
        return data


def _body_timeout() -> ClientBodyTimeout:
    return ClientBodyTimeout("The request body was not received in time.")


def _begin() -> None:
    given = request.headers.get("X-Request-ID", "")
    # 128 random bits from the process's PRNG: unique, as uuid4 would be, without its syscall.
    request_id = given if _REQUEST_ID.match(given) else f"{random.getrandbits(128):032x}"
    g.request_id = request_id
    g.started = time.perf_counter()
    request_id_var.set(request_id)
    answered_by_var.set(None)  # a keep-alive connection's greenlet serves request after request
    budget_note_var.set(None)


def _end(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    started = g.get("started", time.perf_counter())
    ttfb = time.perf_counter() - started
    method, path, status = request.method, request.path, response.status_code
    request_id, client = g.get("request_id", "-"), client_name()
    answered_by = answered_by_var.get()
    lowered = budget_note_var.get()
    session = _session_of(request.headers)

    def log_line() -> None:
        headers = response.headers
        extra = {
            "method": method,
            "path": path,
            "status": status,
            "client": client,
            "vendor": headers.get("X-Vendor-Source"),
            "model": headers.get("X-Model-Source"),
            "attempts": int(headers.get("X-Router-Attempts", 0)),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "ttfb_ms": round(ttfb * 1000, 1),
        }
        if answered_by is not None:
            extra.update(answered_by)
        if lowered is not None:
            # The budget had less left than the request's output allowance.
            extra["budget_max_tokens"] = lowered
        if session is not None:
            extra["session"] = session
        names = tuple(extra)
        line = _ACCESS_FORMATS.get(names)
        if line is None:
            line = _ACCESS_FORMATS[names] = " ".join(f"{name}=%s" for name in names)
        token = request_id_var.set(request_id)
        try:
            access_log.info(line, *extra.values(), extra=extra)
        finally:
            request_id_var.reset(token)

    # For streams this runs when the last byte is sent, so the duration is the whole stream's.
    response.call_on_close(log_line)
    return response


def _session_of(headers: Headers) -> str | None:
    """The agent session a request belongs to (Claude Code names its own), if it says so plainly:
    it goes into the access line, so nothing that could forge a log line is taken."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value is not None:
            return value if _REQUEST_ID.match(value) else None
    return None


def _http_exception(exc: HTTPException) -> Response:
    code = exc.code or 500
    if code == 404:
        error: RouterError = NotFound(f"Unknown URL: {request.method} {request.path}")
    elif code == 405:
        allowed = exc.valid_methods if hasattr(exc, "valid_methods") else None
        error = MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.path}",
            headers={"Allow": ", ".join(allowed)} if allowed else None,
        )
    elif code == 413:
        error = PayloadTooLarge("The request body is too large.")
    elif code == 415:
        error = UnsupportedMediaType("Unsupported Content-Type.")
    elif code < 500:
        error = InvalidRequest(exc.description or exc.name)
        error.status = code
    else:
        error = RouterError(exc.description or exc.name)
        error.status = code
    return error_response(error)


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error while handling %s %s", request.method, request.path)
    return error_response(RouterError("The router failed to handle the request.", code="internal_error"))


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
