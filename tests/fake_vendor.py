"""A fake OpenAI-compatible chat-completions vendor that misbehaves on demand.

Integration tests, the benchmark and ``make demo`` start it as a subprocess and point the router
at it. It is a real HTTP/1.1 server (gevent ``StreamServer`` + a small hand-written parser), so
the router's real HTTP client meets real sockets: keep-alive, chunked and close-delimited
bodies, stalls, resets and split reads.

Process
-------
``python -m tests.fake_vendor [--host 127.0.0.1] [--port 0]`` (from the project root). Port 0
picks a free port. When listening it prints exactly one line ``FAKE_VENDOR_LISTENING <port>``
to stdout. SIGTERM / SIGINT exit at once, even with streams open.

HTTP: request line, headers and a ``Content-Length`` body; anything else it cannot parse
(including a chunked *request* body) gets 400 and a close. Keep-alive by default for HTTP/1.1
(closed on ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``), pipelining
works, ``Expect: 100-continue`` is honoured.

Routes
------
``POST /<vendor>/.../chat/completions``
    The vendor is the FIRST path segment: base URL ``http://127.0.0.1:P/gemini/v1beta/openai``
    means vendor ``gemini``. Any name works. At least three segments are needed.
``GET /health``
    200 ``OK``.
``PUT /_control/vendors/<vendor>``
    Body = a behaviour object (keys below) applied to every later request to that vendor; it
    replaces any previous one. Unknown keys or wrong types answer 400.
``DELETE /_control/vendors/<vendor>``, ``GET /_control/vendors``
    Forget / list the stored behaviours.
``POST /_control/reset``
    Clear behaviours, recorded requests and recorded streams.
``GET /_control/requests[?vendor=X]``
    Recorded chat requests, oldest first (the last 20,000): ``{"vendor", "path", "method",
    "headers": {lower-cased name: value}, "body": parsed JSON or null, "raw": body text (only
    when not valid JSON), "received_at": time.time(), "connection": the number of the TCP
    connection it came on (1, 2, ...), "client_closed_at": time.time() when the
    client went away while the fake was still delaying / streaming this answer, else null}``.
``GET /_control/streams[?vendor=X]``
    One record per streamed answer (the last 20,000): ``{"vendor", "path", "started_at",
    "ended_at", "events_sent", "outcome", "client_closed_at"}``. ``outcome`` is "streaming" or
    "stalled" while running, then "completed", "client_closed" or "dropped". Waits (delay,
    first_delay, interval, stall, split_delay) are spent blocked on the socket being readable,
    so a client close is noticed at once (EOF or ECONNRESET) and ``client_closed_at`` is the
    time.time() it was noticed; a failed write counts too.

Behaviour
---------
The behaviour of one request = built-in defaults, updated by the vendor's quirk preset (a
vendor name starting with ``gemini`` gets ``{"quirks": "gemini"}``), updated by the request
body's ``"x_fake"`` object, updated by the behaviour stored with PUT (last wins). An unknown
``x_fake`` key answers 400. Keys:

``status`` (int, 200)
    Any other value: answer that status with an error body instead of a completion.
``error_format`` ("openai" | "gemini" | "html" | "text"; null = "gemini" under gemini quirks,
    else "openai")
    openai: ``{"error": {"message", "type", "param": null, "code"}}``; gemini: a JSON ARRAY
    ``[{"error": {"code", "message", "status": "INVALID_ARGUMENT"...}}]``; html: an HTML page
    (text/html); text: plain text.
``error_message`` (str | null): replaces the error message.
``retry_after`` (number | null): adds a ``Retry-After`` header to the error.
``delay`` (s, 0): wait before the response headers (a stall before the first byte).
``drop_before_headers`` (bool, false): read the request, then close without answering.
``content`` (str | null): the assistant text; default ``"Hello from <vendor>! You said: <last
    user message text, first 200 chars>"``.
``content_chunks`` (list of str | null): explicit stream pieces (may hold "[DONE]", CR/LF or
    multi-byte UTF-8); their concatenation is the whole answer's content unless ``content`` is
    set. Otherwise the content is cut into ``chunks`` (int, 5) pieces.
``interval`` (s, 0): pause between stream events. ``first_delay`` (s, 0): pause after the
    headers before the first event.
``drop_after`` (int | null): stream: after N content events close the socket (FIN, no final
    zero chunk, no [DONE]); whole answer: headers with the full Content-Length, half the body,
    close. N larger than the number of content events never fires.
``stall_after`` (int | null) + ``stall`` (s, 3600): after N content events go silent for
    ``stall`` seconds (still noticing a client close), then continue.
``malformed_after`` (int | null): after N content events send ``data: {"this is not json``
    plus two line endings, then continue.
``done`` (bool, true): end the stream with ``data: [DONE]``.
``framing`` ("chunked" | "close", "chunked"): chunked = ``Transfer-Encoding: chunked``, each
    SSE event its own chunk, written when due; close = no length, ``Connection: close``, the
    body ends when the socket closes.
``line_ending`` ("\\n" | "\\r\\n" | "\\r", "\\n"): used for every SSE line
    (``data: ...<le><le>``).
``split`` (int | null) + ``split_delay`` (s, 0.02): write every SSE event in pieces of
    ``split`` bytes, each its own chunk and send, with ``split_delay`` between pieces, so the
    reader sees CR/LF pairs, JSON and multi-byte UTF-8 split across reads.
``tool_calls`` (bool | null; null = true when the request has a non-empty ``tools`` list and
    ``tool_choice`` is not "none")
    Answer with calls to the tool named by ``tool_choice.function.name``, else tool i of the
    list for call i (cycling; so the first tool when there is one call). Arguments = a JSON
    object string with a value per property in ``parameters.required`` (enum -> first value,
    string -> "example", integer -> 1, number -> 1.5, boolean -> true, array -> [], object ->
    {}). ``parallel`` (int, 1) calls. OpenAI stream: a header delta per call ``{"index", "id":
    "call_...", "type": "function", "function": {"name", "arguments": ""}}`` then argument
    fragments (``chunks`` pieces) ``{"index", "function": {"arguments"}}``, then
    finish_reason "tool_calls".
``usage`` (bool, true): whole answers carry ``usage``; a stream has a final usage chunk
    (``"choices": []``) only when the request asked ``stream_options.include_usage`` (and then,
    like OpenAI, every other chunk carries ``"usage": null``).
``quirks`` ("openai" | "gemini"): gemini imitates Gemini's OpenAI-compatible endpoint: tool
    call ``id`` is "" (whole and streamed); a streamed tool call arrives whole in one delta
    (with ``index``); finish_reason is "stop" even with tool calls; every stream chunk has a
    different ``id`` and the current ``created``; errors default to the gemini format; no
    ``system_fingerprint``.

Content events (counted by drop_after / stall_after / malformed_after, N=0 meaning right after
the first role chunk) are the content deltas, or the tool-argument deltas (gemini: the whole
tool-call deltas). A stream is: role delta, content deltas, a finish chunk with an empty delta,
the optional usage chunk, ``data: [DONE]``. A body that is not a JSON object answers 400.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import itertools
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

import gevent
import orjson
from gevent.server import StreamServer

__all__ = ["DEFAULTS", "FakeVendor", "main"]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_RECORDS = 20_000
# While waiting, bytes a client sends early (pipelining) are kept for the next request; past
# this much we stop reading and only sleep.
MAX_BUFFERED = 1024 * 1024

DEFAULTS: dict[str, Any] = {
    "status": 200,
    "error_format": None,
    "error_message": None,
    "retry_after": None,
    "delay": 0.0,
    "drop_before_headers": False,
    "content": None,
    "content_chunks": None,
    "chunks": 5,
    "interval": 0.0,
    "first_delay": 0.0,
    "drop_after": None,
    "stall_after": None,
    "stall": 3600.0,
    "malformed_after": None,
    "done": True,
    "framing": "chunked",
    "line_ending": "\n",
    "split": None,
    "split_delay": 0.02,
    "tool_calls": None,
    "parallel": 1,
    "usage": True,
    "quirks": "openai",
}

_NONE = type(None)
_NUM = (int, float)
# key -> (allowed types, allowed values or None, minimum for numbers)
_SPEC: dict[str, tuple[tuple[type, ...], tuple[Any, ...] | None, float | None]] = {
    "status": ((int,), None, 100),
    "error_format": ((str, _NONE), ("openai", "gemini", "html", "text", None), None),
    "error_message": ((str, _NONE), None, None),
    "retry_after": ((*_NUM, _NONE), None, 0),
    "delay": (_NUM, None, 0),
    "drop_before_headers": ((bool,), None, None),
    "content": ((str, _NONE), None, None),
    "content_chunks": ((list, _NONE), None, None),
    "chunks": ((int,), None, 1),
    "interval": (_NUM, None, 0),
    "first_delay": (_NUM, None, 0),
    "drop_after": ((int, _NONE), None, 0),
    "stall_after": ((int, _NONE), None, 0),
    "stall": (_NUM, None, 0),
    "malformed_after": ((int, _NONE), None, 0),
    "done": ((bool,), None, None),
    "framing": ((str,), ("chunked", "close"), None),
    "line_ending": ((str,), ("\n", "\r\n", "\r"), None),
    "split": ((int, _NONE), None, 1),
    "split_delay": (_NUM, None, 0),
    "tool_calls": ((bool, _NONE), None, None),
    "parallel": ((int,), None, 1),
    "usage": ((bool,), None, None),
    "quirks": ((str,), ("openai", "gemini"), None),
}
assert _SPEC.keys() == DEFAULTS.keys()

# Per-process prefix + counter: unique ids without calling os.urandom per request.
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def new_id(prefix: str = "chatcmpl-") -> str:
    return f"{prefix}{_ID_PREFIX}{next(_ids):08x}"


def validate_behaviour(obj: Any) -> str | None:
    """Return why ``obj`` is not a valid behaviour object, or None when it is."""
    if not isinstance(obj, dict):
        return "a behaviour must be a JSON object"
    for key, value in obj.items():
        if key not in _SPEC:
            return f"unknown behaviour key {key!r}; known keys: {', '.join(_SPEC)}"
        kinds, choices, minimum = _SPEC[key]
        # bool is an int in Python; only accept it where a bool is meant.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"behaviour key {key!r} has the wrong type: {value!r}"
        if choices is not None and value not in choices:
            return f"behaviour key {key!r} must be one of {choices!r}"
        if minimum is not None and value is not None and value < minimum:
            return f"behaviour key {key!r} must be >= {minimum}"
        if (
            key == "content_chunks"
            and value is not None
            and not (value and all(isinstance(p, str) and p for p in value))
        ):
            return "content_chunks must be a list of non-empty strings"
    return None


def preset(vendor: str) -> dict[str, Any]:
    return {"quirks": "gemini"} if vendor.startswith("gemini") else {}


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class ClientGone(Exception):
    """The peer closed or reset the connection."""


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Status"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        ka: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = ka


class Connection:
    """One client socket: a read buffer, a write buffer, and waits that watch for a close."""

    __slots__ = ("buf", "gone_at", "number", "out", "sock")
    _numbers = itertools.count(1)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Which TCP connection a request came on: tests see whether the router reuses them.
        self.number = next(Connection._numbers)
        self.buf = bytearray()
        # Output is gathered and sent at the next wait or at the end of the answer, so an
        # answer that is all due at once costs one send however many chunks it has.
        self.out: list[bytes] = []
        self.gone_at: float | None = None

    def gone(self) -> NoReturn:
        if self.gone_at is None:
            self.gone_at = time.time()
        raise ClientGone

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        if not self.out:
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out.clear()
        try:
            self.sock.sendall(data)
        except OSError:
            self.gone()

    def pause(self, seconds: float) -> None:
        """Flush, then wait ``seconds`` blocked on the socket being readable.

        Sleeping blindly would hide a client that went away until our next write; blocking in
        recv() with a timeout wakes up on EOF / RST at once. Raises ClientGone.
        """
        if seconds <= 0:
            return
        self.flush()
        deadline = time.monotonic() + seconds
        sock = self.sock
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if len(self.buf) >= MAX_BUFFERED:
                    gevent.sleep(remaining)
                    return
                sock.settimeout(remaining)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    return
                except OSError:
                    self.gone()
                if not data:
                    self.gone()
                self.buf += data  # a pipelined next request: keep it
        finally:
            sock.settimeout(None)

    def abort(self) -> None:
        """Close with a FIN in the middle of an answer (FIN, not RST, so no sent data is lost)."""
        with contextlib.suppress(ClientGone):
            self.flush()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def read_request(self) -> Request | None:
        """Parse the next request; None on a clean EOF between requests."""
        buf = self.buf
        start = 0
        while True:
            # Tolerate stray CRLFs between requests (RFC 9112 2.2).
            while buf[:2] == b"\r\n":
                del buf[:2]
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                break
            if len(buf) > MAX_HEADER_BYTES:
                raise BadRequest(431, "request headers too large")
            start = max(0, len(buf) - 3)
            try:
                data = self.sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            buf += data
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, f"bad request line {lines[0][:100]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(400, f"bad header line {line[:100]!r}")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "transfer-encoding" in headers:
            raise BadRequest(400, "only Content-Length request bodies are supported")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise BadRequest(400, f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large")
        if len(buf) < length and headers.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(buf) < length:
            try:
                data = self.sock.recv(max(65536, length - len(buf)))
            except OSError:
                return None
            if not data:
                return None
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        tokens = headers.get("connection", "").lower()
        keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        if target.startswith(("http://", "https://")):
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        return Request(method, path, query, headers, body, keep_alive)


def response_head(
    status: int,
    content_type: bytes,
    length: int | None,
    keep_alive: bool,
    extra: bytes = b"",
) -> bytes:
    parts = [status_line(status), b"Content-Type: ", content_type, b"\r\n"]
    if length is not None:
        parts += (b"Content-Length: ", str(length).encode(), b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts += (extra, b"\r\n")
    return b"".join(parts)


CT_JSON = b"application/json"
CT_SSE = b"text/event-stream"
CT_TEXT = b"text/plain; charset=utf-8"
CT_HTML = b"text/html; charset=utf-8"

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(fmt: str, status: int, message: str) -> tuple[bytes, bytes]:
    """(content type, body) of an error answer in one of the vendors' formats."""
    if fmt == "gemini":
        code = _GEMINI_STATUS.get(status, "UNKNOWN")
        err = [{"error": {"code": status, "message": message, "status": code}}]
        return CT_JSON, orjson.dumps(err)
    if fmt == "html":
        title = html.escape(status_line(status)[9:].decode().strip())
        page = (
            f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{html.escape(message)}</p></body></html>\n"
        )
        return CT_HTML, page.encode()
    if fmt == "text":
        return CT_TEXT, message.encode()
    kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "error", None))
    err = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return CT_JSON, orjson.dumps(err)


# --------------------------------------------------------------------------------------------
# Answer content


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def default_content(vendor: str, body: dict[str, Any]) -> str:
    said = ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                said = message_text(msg.get("content"))[:200]
                break
    return f"Hello from {vendor}! You said: {said}"


def split_text(text: str, pieces: int) -> list[str]:
    if not text:
        return []
    size = -(-len(text) // pieces)  # ceil: exactly `pieces` pieces when the text is long enough
    return [text[i : i + size] for i in range(0, len(text), size)]


def usage_of(body: dict[str, Any], completion: str) -> dict[str, int]:
    # A rough 4-characters-per-token estimate: only the shape and plausibility matter.
    prompt = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                prompt += 4 + len(message_text(msg.get("content"))) // 4
    completion_tokens = 1 + len(completion) // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


_ARG_EXAMPLES = {"string": "example", "integer": 1, "number": 1.5, "boolean": True}


def planned_tool_calls(body: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str]] | None:
    """[(name, arguments JSON)] when this answer is a tool call, else None."""
    tools = body.get("tools")
    tools = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    choice = body.get("tool_choice")
    wanted = b["tool_calls"]
    if wanted is None:
        wanted = bool(tools) and choice != "none"
    if not wanted:
        return None
    named = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = choice["function"].get("name")
    calls = []
    for i in range(b["parallel"]):
        tool: dict[str, Any] = {}
        if tools:
            tool = tools[i % len(tools)]
            if named:
                tool = next(
                    (t for t in tools if t.get("function", {}).get("name") == named),
                    tool,
                )
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
        name = named or fn.get("name") or "fake_tool"
        params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
        args = {}
        for prop in params.get("required") or []:
            spec = props.get(prop) if isinstance(props.get(prop), dict) else {}
            if spec.get("enum"):
                args[prop] = spec["enum"][0]
            else:
                kind = spec.get("type")
                args[prop] = {"array": [], "object": {}}.get(kind, _ARG_EXAMPLES.get(kind))
                if args[prop] is None:
                    args[prop] = "example"
        calls.append((name, orjson.dumps(args).decode()))
    return calls


# --------------------------------------------------------------------------------------------
# The server


class FakeVendor:
    def __init__(self) -> None:
        self.behaviours: dict[str, dict[str, Any]] = {}
        # vendor -> defaults + preset + PUT, the common case (no x_fake) computed once.
        self._merged: dict[str, dict[str, Any]] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.streams: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)

    # ---- connection loop

    def handle(self, sock: socket.socket, address: Any) -> None:
        # Stream events are small writes that must leave now, not after Nagle's delay.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        try:
            while True:
                try:
                    req = conn.read_request()
                except BadRequest as exc:
                    self.send_error(conn, exc.status, str(exc), False)
                    break
                if req is None:
                    break
                keep = self.dispatch(conn, req)
                conn.flush()
                if not keep:
                    break
        except ClientGone:
            pass
        except Exception:  # a bug in the fake: say so, but keep serving the other connections
            traceback.print_exc()
        finally:
            with contextlib.suppress(ClientGone):
                conn.flush()
            sock.close()

    def dispatch(self, conn: Connection, req: Request) -> bool:
        """Answer one request; return whether the connection stays open."""
        path, method = req.path, req.method
        if path.endswith("/chat/completions") and not path.startswith("/_control/"):
            segments = path.split("/")
            if len(segments) >= 4 and segments[1]:
                if method != "POST":
                    return self.send_error(conn, 405, "use POST", req.keep_alive)
                return self.chat(conn, req, unquote(segments[1]))
        if path == "/health" and method == "GET":
            conn.write(_HEALTH_KA if req.keep_alive else _HEALTH_CLOSE)
            return req.keep_alive
        if path.startswith("/_control/"):
            return self.control(conn, req)
        return self.send_error(conn, 404, f"no route for {method} {path}", req.keep_alive)

    def send_json(self, conn: Connection, status: int, obj: Any, keep_alive: bool) -> bool:
        data = orjson.dumps(obj)
        conn.write(response_head(status, CT_JSON, len(data), keep_alive) + data)
        return keep_alive

    def send_error(
        self,
        conn: Connection,
        status: int,
        message: str,
        keep_alive: bool,
        fmt: str = "openai",
        extra: bytes = b"",
    ) -> bool:
        ctype, data = error_body(fmt, status, message)
        conn.write(response_head(status, ctype, len(data), keep_alive, extra) + data)
        return keep_alive

    # ---- control API

    def control(self, conn: Connection, req: Request) -> bool:
        path, method, ka = req.path, req.method, req.keep_alive
        if path.startswith("/_control/vendors/"):
            vendor = unquote(path[len("/_control/vendors/") :])
            if method == "PUT":
                try:
                    behaviour = orjson.loads(req.body)
                except orjson.JSONDecodeError:
                    return self.send_error(conn, 400, "body is not JSON", ka)
                problem = validate_behaviour(behaviour)
                if problem:
                    return self.send_error(conn, 400, problem, ka)
                self.behaviours[vendor] = behaviour
                self._merged.clear()
                return self.send_json(conn, 200, {"vendor": vendor, "behaviour": behaviour}, ka)
            if method == "DELETE":
                self.behaviours.pop(vendor, None)
                self._merged.clear()
                return self.send_json(conn, 200, {"vendor": vendor, "behaviour": None}, ka)
        elif path == "/_control/vendors" and method == "GET":
            return self.send_json(conn, 200, self.behaviours, ka)
        elif path == "/_control/reset" and method == "POST":
            self.behaviours.clear()
            self._merged.clear()
            self.requests.clear()
            self.streams.clear()
            return self.send_json(conn, 200, {"ok": True}, ka)
        elif path in ("/_control/requests", "/_control/streams") and method == "GET":
            records = self.requests if path == "/_control/requests" else self.streams
            vendor = parse_qs(req.query).get("vendor", [None])[0]
            if vendor is None:
                return self.send_json(conn, 200, list(records), ka)
            return self.send_json(conn, 200, [r for r in records if r["vendor"] == vendor], ka)
        return self.send_error(conn, 404, f"no control route for {method} {path}", ka)

    # ---- chat completions

    def behaviour_for(self, vendor: str, x_fake: dict[str, Any] | None) -> dict[str, Any]:
        if x_fake is None:
            merged = self._merged.get(vendor)
            if merged is None:
                merged = {
                    **DEFAULTS,
                    **preset(vendor),
                    **self.behaviours.get(vendor, {}),
                }
                self._merged[vendor] = merged
            return merged
        return {
            **DEFAULTS,
            **preset(vendor),
            **x_fake,
            **self.behaviours.get(vendor, {}),
        }

    def chat(self, conn: Connection, req: Request, vendor: str) -> bool:
        record: dict[str, Any] = {
            "vendor": vendor,
            "path": req.path,
            "method": req.method,
            "headers": req.headers,
            "body": None,
            "received_at": time.time(),
            "client_closed_at": None,
            "connection": conn.number,
        }
        self.requests.append(record)
        ka = req.keep_alive
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            try:  # orjson refuses a few things json accepts, e.g. integers beyond 64 bits
                body = json.loads(req.body)
            except ValueError:
                record["raw"] = req.body.decode("utf-8", "replace")
                return self.send_error(conn, 400, "We could not parse the JSON body.", ka)
        record["body"] = body
        if not isinstance(body, dict):
            return self.send_error(conn, 400, "The body must be a JSON object.", ka)
        x_fake = body.get("x_fake")
        if x_fake is not None:
            problem = validate_behaviour(x_fake)
            if problem:
                return self.send_error(conn, 400, f"x_fake: {problem}", ka)
        b = self.behaviour_for(vendor, x_fake)
        try:
            return self.answer(conn, req, vendor, body, b, record)
        except ClientGone:
            record["client_closed_at"] = conn.gone_at
            raise

    def answer(
        self,
        conn: Connection,
        req: Request,
        vendor: str,
        body: dict[str, Any],
        b: dict[str, Any],
        record: dict[str, Any],
    ) -> bool:
        ka = req.keep_alive
        if b["drop_before_headers"]:
            conn.abort()
            return False
        gemini = b["quirks"] == "gemini"
        if b["status"] != 200:
            conn.pause(b["delay"])
            status = b["status"]
            fmt = b["error_format"] or ("gemini" if gemini else "openai")
            message = b["error_message"] or f"The fake {vendor} vendor answers {status} as told."
            extra = b""
            if b["retry_after"] is not None:
                ra = b["retry_after"]
                text = str(int(ra)) if float(ra).is_integer() else str(ra)
                extra = f"Retry-After: {text}\r\n".encode()
            return self.send_error(conn, status, message, ka, fmt, extra)
        if body.get("stream") is True:
            return self.stream(conn, req, vendor, body, b)
        conn.pause(b["delay"])
        data = orjson.dumps(self.whole(vendor, body, b))
        if b["drop_after"] is not None:
            conn.write(response_head(200, CT_JSON, len(data), True) + data[: len(data) // 2])
            conn.abort()
            return False
        conn.write(response_head(200, CT_JSON, len(data), ka) + data)
        return ka

    def text_of(self, vendor: str, body: dict[str, Any], b: dict[str, Any]) -> str:
        if b["content"] is not None:
            return b["content"]
        if b["content_chunks"] is not None:
            return "".join(b["content_chunks"])
        return default_content(vendor, body)

    def whole(self, vendor: str, body: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        gemini = b["quirks"] == "gemini"
        calls = planned_tool_calls(body, b)
        finish = "stop"
        if calls is None:
            text = self.text_of(vendor, body, b)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
            }
        else:
            text = "".join(args for _, args in calls)
            tool_calls = [
                {
                    "id": "" if gemini else new_id("call_"),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
                for name, args in calls
            ]
            message = {"role": "assistant", "content": None, "refusal": None}
            message["tool_calls"] = tool_calls
            finish = "stop" if gemini else "tool_calls"
        answer: dict[str, Any] = {
            "id": new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        if not gemini:
            answer["system_fingerprint"] = "fp_fake"
        answer["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        if b["usage"]:
            answer["usage"] = usage_of(body, text)
        return answer

    def events(self, vendor: str, body: dict[str, Any], b: dict[str, Any]) -> Iterator[tuple[bytes, bool]]:
        """(SSE data payload, is a content event) in order; built lazily so `created` is live."""
        gemini = b["quirks"] == "gemini"
        options = body.get("stream_options")
        with_usage = b["usage"] and isinstance(options, dict) and options.get("include_usage")
        model = body.get("model")
        stream_id = new_id()
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            c: dict[str, Any] = {
                # Gemini gives every chunk its own id; OpenAI keeps one per stream.
                "id": new_id() if gemini else stream_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()) if gemini else created,
                "model": model,
            }
            if not gemini:
                c["system_fingerprint"] = "fp_fake"
            c["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            if with_usage:
                c["usage"] = None
            return orjson.dumps(c)

        calls = planned_tool_calls(body, b)
        if calls is None:
            text = self.text_of(vendor, body, b)
            yield chunk({"role": "assistant", "content": ""}), False
            pieces = b["content_chunks"] or split_text(text, b["chunks"])
            for piece in pieces:
                yield chunk({"content": piece}), True
            finish = "stop"
        else:
            text = "".join(args for _, args in calls)
            yield chunk({"role": "assistant", "content": None}), False
            for i, (name, args) in enumerate(calls):
                if gemini:  # the whole call in one delta, with an empty id
                    call = {"index": i, "id": "", "type": "function"}
                    call["function"] = {"name": name, "arguments": args}
                    yield chunk({"tool_calls": [call]}), True
                    continue
                call = {"index": i, "id": new_id("call_"), "type": "function"}
                call["function"] = {"name": name, "arguments": ""}
                yield chunk({"tool_calls": [call]}), False
                for piece in split_text(args, b["chunks"]):
                    fragment = {"index": i, "function": {"arguments": piece}}
                    yield chunk({"tool_calls": [fragment]}), True
            finish = "stop" if gemini else "tool_calls"
        yield chunk({}, finish), False
        if with_usage:
            usage = {
                "id": stream_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage_of(body, text),
            }
            yield orjson.dumps(usage), False
        if b["done"]:
            yield b"[DONE]", False

    def stream(
        self,
        conn: Connection,
        req: Request,
        vendor: str,
        body: dict[str, Any],
        b: dict[str, Any],
    ) -> bool:
        rec: dict[str, Any] = {
            "vendor": vendor,
            "path": req.path,
            "started_at": time.time(),
            "ended_at": None,
            "events_sent": 0,
            "outcome": "streaming",
            "client_closed_at": None,
        }
        self.streams.append(rec)
        try:
            keep = self._stream(conn, req, vendor, body, b, rec)
            if rec["outcome"] == "streaming":  # not "dropped"
                rec["outcome"] = "completed"
            return keep
        except ClientGone:
            rec["outcome"] = "client_closed"
            rec["client_closed_at"] = conn.gone_at
            raise
        finally:
            rec["ended_at"] = time.time()

    def _stream(
        self,
        conn: Connection,
        req: Request,
        vendor: str,
        body: dict[str, Any],
        b: dict[str, Any],
        rec: dict[str, Any],
    ) -> bool:
        chunked = b["framing"] == "chunked"
        ka = req.keep_alive and chunked
        split = b["split"]
        end = b["line_ending"].encode() * 2

        def emit(event: bytes) -> None:
            pieces = [event[i : i + split] for i in range(0, len(event), split)] if split else [event]
            for n, piece in enumerate(pieces):
                if n:
                    conn.pause(b["split_delay"])
                conn.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if split:
                    conn.flush()  # each piece its own send, even without split_delay
            rec["events_sent"] += 1

        conn.pause(b["delay"])
        extra = b"Cache-Control: no-cache\r\n"
        if chunked:
            extra += b"Transfer-Encoding: chunked\r\n"
        conn.write(response_head(200, CT_SSE, None, ka, extra))
        conn.pause(b["first_delay"])
        content_events = 0
        for index, (payload, is_content) in enumerate(self.events(vendor, body, b)):
            if index:
                conn.pause(b["interval"])
            emit(b"data: " + payload + end)
            # The "after N content events" actions fire right after the N-th content
            # event, or after the first (role) event for N = 0.
            if not is_content and index:
                continue
            content_events += is_content
            if b["malformed_after"] == content_events:
                emit(b'data: {"this is not json' + end)
            if b["stall_after"] == content_events:
                rec["outcome"] = "stalled"
                conn.pause(b["stall"])
                rec["outcome"] = "streaming"
            if b["drop_after"] == content_events:
                rec["outcome"] = "dropped"
                conn.abort()
                return False
        if chunked:
            conn.write(b"0\r\n\r\n")
        conn.flush()
        if not ka:
            conn.abort()  # close framing: the close *is* the end of the body
        return ka


_HEALTH_KA = response_head(200, CT_TEXT, 2, True) + b"OK"
_HEALTH_CLOSE = response_head(200, CT_TEXT, 2, False) + b"OK"


def main(argv: list[str] | None = None) -> None:
    from gevent import monkey

    monkey.patch_all()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:  # 1,000+ concurrent streams need more descriptors than the usual soft limit of 1024
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    server = StreamServer((args.host, args.port), FakeVendor().handle, backlog=4096)
    server.start()

    def stop() -> None:
        # Exit at once: open streams may be stalled for an hour and nothing needs flushing.
        os._exit(0)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    sys.stdout.write(f"FAKE_VENDOR_LISTENING {server.server_port}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
