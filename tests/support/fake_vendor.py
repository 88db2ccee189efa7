"""A fake OpenAI-compatible vendor (chat completions, embeddings) that misbehaves on demand.

Integration tests, the benchmark and ``make demo`` start it as a subprocess and point the router
at it. It is a real HTTP/1.1 server (gevent ``StreamServer`` + a small hand-written parser), so
the router's real HTTP client meets real sockets: keep-alive, chunked and close-delimited
bodies, stalls, resets and split reads.

Process
-------
``python -m tests.support.fake_vendor [--host 127.0.0.1] [--port 0] [--tls-cert CHAIN --tls-key KEY]``
(from the project root). Port 0 picks a free port. With ``--tls-cert``/``--tls-key`` (PEM files,
e.g. from ``tests.support.certs``) it serves HTTPS instead of HTTP (gevent's ssl wrap), control API
included. When listening it prints exactly one line ``FAKE_VENDOR_LISTENING <port>`` to stdout.
SIGTERM / SIGINT exit at once, even with streams open.

HTTP: request line, headers and a ``Content-Length`` body; anything else it cannot parse
(including a chunked *request* body) gets 400 and a close. Keep-alive by default for HTTP/1.1
(closed on ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``), pipelining
works, ``Expect: 100-continue`` is honoured.

Routes
------
``POST /<vendor>/.../chat/completions``
    The vendor is the FIRST path segment: base URL ``http://127.0.0.1:P/gemini/v1beta/openai``
    means vendor ``gemini``. Any name works. At least three segments are needed.
``POST /<vendor>/.../embeddings``
    OpenAI's embeddings answer: ``{"object": "list", "data": [{"object": "embedding", "index",
    "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``. ``input`` is a string,
    a list of strings, a list of token ints or a list of such lists (else 400); one item per
    string / token list. Each vector is derived from a hash of its item (the same item, the same
    vector), has unit length and ``dimensions`` values (default 8), rounded to float32;
    ``encoding_format: "base64"`` sends base64 of the little-endian float32 values instead.
    Usage: a token list counts its length, a string 1 + len / 4. Of the behaviour keys below,
    these apply: status (with everything about errors, 1xx and 3xx), delay,
    drop_before_headers, drop_after (half the body), error_in_200, usage.
``GET|POST /<vendor>/redirected``
    Where 3xx answers point. Recorded (endpoint "redirected"), answered 404: a request here
    means a client followed a redirect.
``GET /health``
    200 ``OK``.
``PUT /_control/vendors/<vendor>``
    Body = a behaviour object (keys below) applied to every later request to that vendor; it
    replaces any previous one. Unknown keys or wrong types answer 400.
``DELETE /_control/vendors/<vendor>``, ``GET /_control/vendors``
    Forget / list the stored behaviours.
``POST /_control/reset``
    Clear behaviours, recorded requests, recorded streams and the prompt caches (``prefix_cache``).
``GET /_control/requests[?vendor=X]``
    Recorded requests, oldest first (the last 20,000): ``{"vendor", "endpoint": "chat" |
    "embeddings" | "redirected", "path", "method", "headers": {lower-cased name: value}, "body":
    parsed JSON or null, "raw": body text (only when not valid JSON), "received_at": time.time(),
    "connection": the number of the TCP connection it came on (1, 2, ...), "client_closed_at":
    time.time() when the client went away while the fake was still delaying / streaming this
    answer, else null}``.
``GET /_control/streams[?vendor=X]``
    One record per streamed answer (the last 20,000): ``{"vendor", "path", "started_at",
    "ended_at", "events_sent", "comments_sent", "outcome", "client_closed_at"}``.
    ``events_sent`` counts SSE events, not comments. ``outcome`` is "streaming" or "stalled" while
    running, then "completed", "error_event", "client_closed" or "dropped". Waits (delay,
    first_delay, content_delay, interval, stall, split_delay) are spent blocked on the socket
    being readable, so a client close is noticed at once (EOF or ECONNRESET) and
    ``client_closed_at`` is the time.time() it was noticed; a failed write counts too.

Behaviour
---------
The behaviour of one request = built-in defaults, updated by the vendor's quirk preset (a
vendor name starting with ``gemini`` gets ``{"quirks": "gemini"}``), updated by the request
body's ``"x_fake"`` object, updated by the behaviour stored with PUT (last wins). An unknown
``x_fake`` key answers 400. Keys:

``status`` (int 100-599, 200)
    4xx / 5xx (and 2xx other than 200): that status with an error body instead of a completion.
    3xx: that status with a ``Location: /<vendor>/redirected`` header and the error body (none
    for 304). 1xx: an interim head ``HTTP/1.1 <status> <phrase>`` with a ``Link`` header and no
    body, sent at once, THEN the final answer exactly as with status 200 (so a client that takes
    the 1xx for the answer finds the 200 answer left unread on the connection).
``error_format`` ("openai" | "gemini" | "html" | "text"; null = "gemini" under gemini quirks,
    else "openai")
    openai: ``{"error": {"message", "type", "param": null, "code"}}``; gemini: a JSON ARRAY
    ``[{"error": {"code", "message", "status": "INVALID_ARGUMENT"...}}]``; html: an HTML page
    (text/html); text: plain text.
``error_message`` (str | null): replaces the error message.
``retry_after`` (number | null): adds a ``Retry-After`` header to the error.
``delay`` (s, 0): wait before the response headers (a stall before the first byte).
``error_in_200`` (object | null): answer 200, ``application/json``, body
    ``{"error": <this object>}`` -- for a stream request too (a JSON body, not a stream).
``no_choices`` (bool, false): a whole answer's chat.completion has no ``choices`` key.
``null_error`` (bool, false): a whole answer and every stream chunk also carry ``"error": null``,
    as several OpenAI-compatible servers send beside a good answer.
``drop_before_headers`` (bool, false): read the request, then close without answering.
``content`` (str | null): the assistant text; default ``"Hello from <vendor>! You said: <last
    user message text, first 200 chars>"``.
``content_chunks`` (list of str | null): explicit stream pieces (may hold "[DONE]", CR/LF or
    multi-byte UTF-8); their concatenation is the whole answer's content unless ``content`` is
    set. Otherwise the content is cut into ``chunks`` (int, 5) pieces.
``interval`` (s, 0): pause between stream events. ``first_delay`` (s, 0): pause after the
    headers before the first event. ``content_delay`` (s, 0): pause after the role chunk before
    the first content event (a slow first token), on top of ``interval``.
``comment_every`` (s | null): during every wait of a stream (first_delay, content_delay,
    interval, stall) send an SSE comment ``: ping<le><le>`` this often (at every, 2 x every, ...
    while the wait lasts). Comments are not content events and not counted in ``events_sent``.
``drop_after`` (int | null): stream: after N content events close the socket (FIN, no final
    zero chunk, no [DONE]); whole answer: headers with the full Content-Length, half the body,
    close. N larger than the number of content events never fires.
``stall_after`` (int | null) + ``stall`` (s, 3600): after N content events go silent for
    ``stall`` seconds (still noticing a client close), then continue.
``malformed_after`` (int | null): after N content events send ``data: {"this is not json``
    plus two line endings, then continue.
``error_event_after`` (int | null) + ``error_event`` (object | null): after N content events
    send ``data: {"error": <error_event>}`` and end the stream there, cleanly (the chunked body
    is terminated; no finish chunk, no usage, no [DONE]). Default error: ``{"message", "type":
    "server_error", "param": null, "code": 500}``.
``error_with_first`` (bool, false): the error event goes out in the SAME write and HTTP chunk
    as the first content event, then the stream ends (as ``error_event_after: 1``, but a
    reader gets both events in one read).
``done`` (bool, true): end the stream with ``data: [DONE]``.
``final_blank_line`` (bool, true): false = the stream's last event (``[DONE]``; with done false
    the last chunk; or the error event) ends with ONE line ending, no blank line, and the body
    ends there. ``final_line_ending`` (bool, true): false = that last event has no line ending
    at all (whatever ``final_blank_line`` says).
``revoked_keys`` (list of str | null): API keys the vendor no longer accepts: a request whose
    ``Authorization: Bearer <key>`` names one of them is answered 401 (``invalid_api_key``, in
    ``error_format``) before anything else of the behaviour applies, chat and embeddings alike;
    requests with any other key are answered as the rest of the behaviour says. A revoked key
    of a real vendor, one key of several.
``reasoning`` (str | null): the model's reasoning, as some OpenAI-compatible vendors send it:
    ``reasoning_content`` beside the content of a whole answer; in a stream, deltas of
    ``reasoning_content`` (cut into ``chunks`` pieces, content events) before the content.
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
    finish_reason "tool_calls". Gemini stream: see ``quirks`` and ``tool_call_index``.
``tool_call_index`` ("absent" | "zero" | "sequential" | null): gemini quirks only. The ``index``
    of the streamed tool calls: no ``index`` key / 0 for every call / 0, 1, 2... Null = "absent"
    with ``parallel`` > 1 and 0 for a single call.
``prefix_cache`` (int | null): emulate a vendor's prompt cache, in blocks of this many tokens.
    The fake remembers every prompt per vendor, credential (the ``Authorization`` header) and
    model; ``usage`` then carries ``prompt_tokens_details.cached_tokens`` = the longest prefix of
    this request's prompt (its messages' roles and text, in order) seen before under that
    credential and model, in whole blocks, never more than ``prompt_tokens`` (0 on a miss).
    Null (the default): no cache, and no ``prompt_tokens_details``.
``usage`` (bool, true): whole answers carry ``usage``; a stream has a final usage chunk
    (``"choices": []``) only when the request asked ``stream_options.include_usage`` (and then,
    like OpenAI, every other chunk carries ``"usage": null``).
``cached_tokens`` (int | null): chat usage (whole and streamed) adds ``prompt_tokens_details:
    {"cached_tokens": N}`` (at most the prompt tokens), as vendors with a prompt cache report it.
``quirks`` ("openai" | "gemini"): gemini imitates Gemini's OpenAI-compatible endpoint: tool
    call ``id`` is "" (whole and streamed); each streamed tool call arrives whole in a delta
    (and chunk) of its own (``index`` per ``tool_call_index``); finish_reason is "stop" even
    with tool calls; every stream chunk has a different ``id`` and the current ``created``;
    errors default to the gemini format; no ``system_fingerprint``; a chat request carrying
    ``prompt_cache_key`` is refused with 400 ``Unknown name "prompt_cache_key"``, as Gemini does.

Directives (chat completions, whole and streamed, either quirks)
    The conversation's current turn (the messages after the last assistant message) can direct
    the answer, so a real client (an agent) can be walked through a tool round trip:

    - ``[[fake:tool_call NAME {json args}]]`` in the text of its last ``user`` message: the
      answer is a call to the tool named exactly NAME (as it appears in the request's ``tools``,
      i.e. after any renaming by the router) with these arguments (``{}`` when left out), in the
      shapes ``tool_calls`` describes, finish_reason included. One call per directive, in order;
      this wins over ``tool_calls``, ``parallel``, ``content`` and ``content_chunks``. A NAME
      not in ``tools``, or arguments that are not one JSON object followed by ``]]``, answer a
      text saying so (``fake: ...``) instead.
    - one or more ``tool`` messages (tool results came back): the answer is the text ``tool
      result: <content>`` (one line per tool message) in place of the default content and of an
      automatic tool call; ``content``, ``content_chunks`` and ``tool_calls: true`` still win.

Content events (counted by drop_after / stall_after / malformed_after / error_event_after, N=0
meaning right after the first role chunk) are the content deltas, or the tool-argument deltas
(gemini: the whole tool-call deltas); SSE comments never count. A stream is: role delta,
content deltas, a finish chunk with an empty delta, the optional usage chunk, ``data: [DONE]``.
A body that is not a JSON object answers 400.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import html
import itertools
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, unquote, urlsplit

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
    "error_in_200": None,
    "no_choices": False,
    "error_event_after": None,
    "error_event": None,
    "error_with_first": False,
    "tool_call_index": None,
    "content_delay": 0.0,
    "comment_every": None,
    "final_blank_line": True,
    "final_line_ending": True,
    "reasoning": None,
    "null_error": False,
    "revoked_keys": None,
    "prefix_cache": None,
    "cached_tokens": None,
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
    "error_in_200": ((dict, _NONE), None, None),
    "no_choices": ((bool,), None, None),
    "error_event_after": ((int, _NONE), None, 0),
    "error_event": ((dict, _NONE), None, None),
    "error_with_first": ((bool,), None, None),
    "tool_call_index": ((str, _NONE), ("absent", "zero", "sequential", None), None),
    "content_delay": (_NUM, None, 0),
    "comment_every": ((*_NUM, _NONE), None, 0.001),
    "final_blank_line": ((bool,), None, None),
    "final_line_ending": ((bool,), None, None),
    "reasoning": ((str, _NONE), None, None),
    "null_error": ((bool,), None, None),
    "revoked_keys": ((list, _NONE), None, None),
    "prefix_cache": ((int, _NONE), None, 1),
    "cached_tokens": ((int, _NONE), None, 0),
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
        if key == "status" and value > 599:
            return "behaviour key 'status' must be <= 599"
        if (
            key == "content_chunks"
            and value is not None
            and not (value and all(isinstance(p, str) and p for p in value))
        ):
            return "content_chunks must be a list of non-empty strings"
        if key == "revoked_keys" and value is not None and not all(isinstance(k, str) and k for k in value):
            return "revoked_keys must be a list of non-empty strings"
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

# Where a 3xx answer points (``/<vendor>/redirected``): a client that follows it is recorded there.
REDIRECT_TARGET = "redirected"


def _bearer(headers: dict[str, str]) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def new_record(conn: Connection, req: Request, vendor: str, endpoint: str) -> dict[str, Any]:
    """The /_control/requests record of one request; ``body`` is filled in once parsed."""
    return {
        "vendor": vendor,
        "endpoint": endpoint,
        "path": req.path,
        "method": req.method,
        "headers": req.headers,
        "body": None,
        "received_at": time.time(),
        "client_closed_at": None,
        "connection": conn.number,
    }


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def embedding_items(value: Any) -> list[str | list[int]] | None:
    """The items of an embeddings ``input`` (a string, strings, tokens or token lists), else None."""
    if isinstance(value, str) or _is_tokens(value):
        return [value]
    many = isinstance(value, list) and bool(value)
    if many and (all(isinstance(v, str) for v in value) or all(_is_tokens(v) for v in value)):
        return value
    return None


def embeddings_problem(body: dict[str, Any]) -> str | None:
    """Why an embeddings request is refused (OpenAI answers these 400), or None."""
    if embedding_items(body.get("input")) is None:
        return "'input' must be a string, a list of strings, a list of integers or a list of integer lists."
    dims = body.get("dimensions")
    if dims is not None and (type(dims) is not int or dims < 1):
        return "'dimensions' must be a positive integer."
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return "'encoding_format' must be 'float' or 'base64'."
    return None


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit-length vector derived from a hash of ``item``: the same item, the same vector.

    Values are rounded to float32, so the float and the base64 forms carry the same numbers.
    """
    seed = orjson.dumps(item)
    raw = hashlib.shake_256(seed).digest(4 * dimensions)
    ints = struct.unpack(f"<{dimensions}I", raw)
    values = [i / 2**31 - 1 for i in ints]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings answer for a valid request (see ``embeddings_problem``)."""
    items = embedding_items(body["input"]) or []
    dims = body.get("dimensions") or 8
    base64_wanted = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, item in enumerate(items):
        vector: Any = embedding_vector(item, dims)
        if base64_wanted:
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens += len(item) if isinstance(item, list) else 1 + len(item) // 4
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


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


def usage_of(body: dict[str, Any], completion: str, cached: int | None = None) -> dict[str, Any]:
    """The usage of an answer; with ``cached`` (a prompt cache, emulated or told) its cached input tokens too."""
    # A rough 4-characters-per-token estimate: only the shape and plausibility matter.
    prompt = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                prompt += 4 + len(message_text(msg.get("content"))) // 4
    completion_tokens = 1 + len(completion) // 4
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt), "audio_tokens": 0}
    return usage


def prompt_blocks(body: dict[str, Any], block_tokens: int) -> list[bytes]:
    """Chained digests of the prompt's whole blocks (4 characters a token, as usage_of counts):
    the k-th digest stands for the first k blocks, so a prefix is cached iff its last digest is."""
    messages = body.get("messages")
    text = "".join(
        f"{msg.get('role')}\0{message_text(msg.get('content'))}\0"
        for msg in (messages if isinstance(messages, list) else [])
        if isinstance(msg, dict)
    ).encode()
    size = 4 * block_tokens
    digests, previous = [], b""
    for start in range(0, len(text) - size + 1, size):
        previous = hashlib.blake2b(previous + text[start : start + size], digest_size=16).digest()
        digests.append(previous)
    return digests


_ARG_EXAMPLES = {"string": "example", "integer": 1, "number": 1.5, "boolean": True}


DIRECTIVE = "[[fake:tool_call"
_DIRECTIVE_RE = re.compile(r"\[\[fake:tool_call\s+([^\s\]]+)\s*")
_JSON = json.JSONDecoder()


def directed_answer(body: dict[str, Any], b: dict[str, Any]) -> tuple[list[tuple[str, str]] | None, str | None] | None:
    """What the conversation's current turn directs: ([(name, arguments JSON)], None), (None, text) or None.

    The current turn is the messages after the last assistant message. Tool results in it are
    echoed as ``tool result: <content>`` (unless ``content``, ``content_chunks`` or ``tool_calls:
    true`` says otherwise); else every ``[[fake:tool_call NAME {args}]]`` in its last user
    message is a call to the tool of exactly that name in ``tools``.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    turn = []
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") == "assistant":
            break
        turn.append(msg)
    turn.reverse()
    results = [message_text(m.get("content")) for m in turn if m.get("role") == "tool"]
    if results:
        if b["content"] is not None or b["content_chunks"] is not None or b["tool_calls"] is True:
            return None
        return None, "\n".join(f"tool result: {result}" for result in results)
    users = [m for m in turn if m.get("role") == "user"]
    text = message_text(users[-1].get("content")) if users else ""
    if DIRECTIVE not in text:
        return None
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    names = [t["function"].get("name") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    calls = []
    for match in _DIRECTIVE_RE.finditer(text):
        name, pos = match.group(1), match.end()
        args: Any = {}
        try:
            if not text.startswith("]]", pos):
                args, pos = _JSON.raw_decode(text, pos)
                pos = len(text) - len(text[pos:].lstrip())
            if not isinstance(args, dict) or not text.startswith("]]", pos):
                raise ValueError("NAME must be followed by one JSON object (or nothing), then ]]")
        except ValueError as exc:
            return None, f"fake: bad directive {text[match.start() : match.start() + 200]!r}: {exc}"
        if name not in names:
            return None, f"fake: the directive names tool {name!r}, not among the request's tools {names!r}"
        calls.append((name, orjson.dumps(args).decode()))
    if not calls:
        return None, f"fake: no directive could be read in {text[:200]!r}"
    return calls, None


def planned_tool_calls(body: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str]] | None:
    """[(name, arguments JSON)] when this answer is a tool call, else None."""
    directed = directed_answer(body, b)
    if directed is not None:
        return directed[0]
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
        # (vendor, Authorization, model) -> digests of every prompt prefix seen (prefix_cache).
        self.prompt_caches: dict[tuple[str, str, str], set[bytes]] = {}

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
        if not path.startswith("/_control/"):
            segments = path.split("/")
            endpoint = None
            if path.endswith("/chat/completions") and len(segments) >= 4:
                endpoint = "chat"
            elif path.endswith("/embeddings") and len(segments) >= 3:
                endpoint = "embeddings"
            elif len(segments) == 3 and segments[2] == REDIRECT_TARGET:
                endpoint = REDIRECT_TARGET
            if endpoint is not None and segments[1]:
                vendor = unquote(segments[1])
                if endpoint == REDIRECT_TARGET:
                    self.requests.append(new_record(conn, req, vendor, endpoint))
                    return self.send_error(conn, 404, "a redirect from the fake was followed", req.keep_alive)
                if method != "POST":
                    return self.send_error(conn, 405, "use POST", req.keep_alive)
                return self.chat(conn, req, vendor, endpoint)
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
            self.prompt_caches.clear()
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

    def chat(self, conn: Connection, req: Request, vendor: str, endpoint: str) -> bool:
        """Answer a chat-completions or an embeddings request, as the behaviour says."""
        record = new_record(conn, req, vendor, endpoint)
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
        if endpoint == "chat" and b["quirks"] == "gemini" and "prompt_cache_key" in body:
            message = 'Invalid JSON payload received. Unknown name "prompt_cache_key": Cannot find field.'
            return self.send_error(conn, 400, message, ka, "gemini")
        if b["revoked_keys"] and _bearer(req.headers) in b["revoked_keys"]:
            fmt = b["error_format"] or ("gemini" if b["quirks"] == "gemini" else "openai")
            return self.send_error(conn, 401, "Incorrect API key provided: the key was revoked.", ka, fmt)
        if endpoint == "embeddings":
            problem = embeddings_problem(body)
            if problem:
                return self.send_error(conn, 400, problem, ka)
        try:
            return self.answer(conn, req, vendor, body, b, endpoint)
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
        endpoint: str,
    ) -> bool:
        ka = req.keep_alive
        if b["drop_before_headers"]:
            conn.abort()
            return False
        gemini = b["quirks"] == "gemini"
        status = b["status"]
        if status < 200:
            # An interim answer (no body), then the final answer as if status were 200.
            conn.write(status_line(status) + b"Link: </fake>; rel=preload\r\n\r\n")
            conn.flush()
        elif status != 200:
            conn.pause(b["delay"])
            fmt = b["error_format"] or ("gemini" if gemini else "openai")
            message = b["error_message"] or f"The fake {vendor} vendor answers {status} as told."
            extra = b""
            if b["retry_after"] is not None:
                ra = b["retry_after"]
                text = str(int(ra)) if float(ra).is_integer() else str(ra)
                extra = f"Retry-After: {text}\r\n".encode()
            if 300 <= status < 400:
                extra += f"Location: /{quote(vendor)}/{REDIRECT_TARGET}\r\n".encode()
                if status == 304:  # may carry no body
                    conn.write(response_head(status, CT_TEXT, 0, ka, extra))
                    return ka
            return self.send_error(conn, status, message, ka, fmt, extra)
        if b["error_in_200"] is not None:
            conn.pause(b["delay"])
            return self.send_json(conn, 200, {"error": b["error_in_200"]}, ka)
        cached = self.cached_tokens(vendor, req, body, b["prefix_cache"]) if endpoint == "chat" else None
        if b["cached_tokens"] is not None and endpoint == "chat":
            cached = b["cached_tokens"]  # told outright: wins over an emulated cache
        if endpoint == "chat" and body.get("stream") is True:
            return self.stream(conn, req, vendor, body, b, cached)
        conn.pause(b["delay"])
        answer = self.whole(vendor, body, b, cached) if endpoint == "chat" else embeddings(body)
        if endpoint == "embeddings" and not b["usage"]:
            del answer["usage"]
        data = orjson.dumps(answer)
        if b["drop_after"] is not None:
            conn.write(response_head(200, CT_JSON, len(data), True) + data[: len(data) // 2])
            conn.abort()
            return False
        conn.write(response_head(200, CT_JSON, len(data), ka) + data)
        return ka

    def cached_tokens(self, vendor: str, req: Request, body: dict[str, Any], block_tokens: int | None) -> int | None:
        """The prompt-cache hit of this request, in tokens, and its prefixes remembered; None without a cache."""
        if block_tokens is None:
            return None
        key = (vendor, req.headers.get("authorization", ""), str(body.get("model")))
        seen = self.prompt_caches.setdefault(key, set())
        blocks = prompt_blocks(body, block_tokens)
        hits = 0
        while hits < len(blocks) and blocks[hits] in seen:
            hits += 1
        seen.update(blocks)
        return hits * block_tokens

    def text_of(self, vendor: str, body: dict[str, Any], b: dict[str, Any]) -> str:
        if b["content"] is not None:
            return b["content"]
        if b["content_chunks"] is not None:
            return "".join(b["content_chunks"])
        directed = directed_answer(body, b)
        if directed is not None and directed[1] is not None:
            return directed[1]
        return default_content(vendor, body)

    def whole(self, vendor: str, body: dict[str, Any], b: dict[str, Any], cached: int | None = None) -> dict[str, Any]:
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
            if b["reasoning"] is not None:
                message["reasoning_content"] = b["reasoning"]
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
        if not b["no_choices"]:
            answer["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        if b["usage"]:
            answer["usage"] = usage_of(body, text, cached)
        if b["null_error"]:
            answer["error"] = None
        return answer

    def events(
        self, vendor: str, body: dict[str, Any], b: dict[str, Any], cached: int | None = None
    ) -> Iterator[tuple[bytes, bool]]:
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
            if b["null_error"]:
                c["error"] = None
            return orjson.dumps(c)

        calls = planned_tool_calls(body, b)
        if calls is None:
            text = self.text_of(vendor, body, b)
            yield chunk({"role": "assistant", "content": ""}), False
            if b["reasoning"] is not None:
                for piece in split_text(b["reasoning"], b["chunks"]):
                    yield chunk({"reasoning_content": piece}), True
            pieces = b["content_chunks"] or split_text(text, b["chunks"])
            for piece in pieces:
                yield chunk({"content": piece}), True
            finish = "stop"
        else:
            text = "".join(args for _, args in calls)
            yield chunk({"role": "assistant", "content": None}), False
            index_style = b["tool_call_index"] or ("absent" if len(calls) > 1 else "zero")
            for i, (name, args) in enumerate(calls):
                if gemini:  # the whole call in one delta of its own, with an empty id
                    call: dict[str, Any] = {"id": "", "type": "function"}
                    if index_style != "absent":
                        call = {"index": i if index_style == "sequential" else 0, **call}
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
                "usage": usage_of(body, text, cached),
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
        cached: int | None = None,
    ) -> bool:
        rec: dict[str, Any] = {
            "vendor": vendor,
            "path": req.path,
            "started_at": time.time(),
            "ended_at": None,
            "events_sent": 0,
            "comments_sent": 0,
            "outcome": "streaming",
            "client_closed_at": None,
        }
        self.streams.append(rec)
        try:
            keep = self._stream(conn, req, vendor, body, b, rec, cached)
            if rec["outcome"] == "streaming":  # not "dropped" or "error_event"
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
        cached: int | None,
    ) -> bool:
        chunked = b["framing"] == "chunked"
        ka = req.keep_alive and chunked
        split = b["split"]
        le = b["line_ending"].encode()
        end = le * 2
        # How the stream's very last event ends: normally a blank line, on demand less.
        last_end = end if b["final_blank_line"] else le
        if not b["final_line_ending"]:
            last_end = b""

        def emit(data: bytes, events: int = 1) -> None:
            pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
            for n, piece in enumerate(pieces):
                if n:
                    conn.pause(b["split_delay"])
                conn.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if split:
                    conn.flush()  # each piece its own send, even without split_delay
            rec["events_sent"] += events

        def wait(seconds: float) -> None:
            """Pause, sending an SSE comment every ``comment_every`` seconds meanwhile."""
            every = b["comment_every"]
            if not every:
                conn.pause(seconds)
                return
            deadline = time.monotonic() + seconds
            due = time.monotonic() + every
            while due < deadline:
                conn.pause(due - time.monotonic())
                emit(b": ping" + end, events=0)
                rec["comments_sent"] += 1
                due += every
            conn.pause(deadline - time.monotonic())

        def error_event(ending: bytes) -> bytes:
            error = b["error_event"] or {
                "message": f"The fake {vendor} vendor failed mid-stream as told.",
                "type": "server_error",
                "param": None,
                "code": 500,
            }
            return b"data: " + orjson.dumps({"error": error}) + ending

        conn.pause(b["delay"])
        extra = b"Cache-Control: no-cache\r\n"
        if chunked:
            extra += b"Transfer-Encoding: chunked\r\n"
        conn.write(response_head(200, CT_SSE, None, ka, extra))
        wait(b["first_delay"])
        content_events = 0
        error_after = 1 if b["error_with_first"] else b["error_event_after"]
        for index, ((payload, is_content), last) in enumerate(mark_last(self.events(vendor, body, b, cached))):
            pause = b["interval"] if index else 0.0
            if is_content and not content_events:
                pause += b["content_delay"]
            wait(pause)
            content_events += is_content
            # The "after N content events" actions fire right after the N-th content
            # event, or after the first (role) event for N = 0.
            fires = is_content or not index
            if fires and error_after == content_events:
                event = b"data: " + payload + end
                if b["error_with_first"]:  # one HTTP chunk, one send: the router reads both at once
                    emit(event + error_event(last_end), events=2)
                else:
                    emit(event)
                    wait(b["interval"])
                    emit(error_event(last_end))
                rec["outcome"] = "error_event"
                break
            emit(b"data: " + payload + (last_end if last else end))
            if not fires:
                continue
            if b["malformed_after"] == content_events:
                emit(b'data: {"this is not json' + end)
            if b["stall_after"] == content_events:
                rec["outcome"] = "stalled"
                wait(b["stall"])
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


def mark_last(items: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
    """(item, whether it is the last one), looking one item ahead."""
    previous = sentinel = object()
    for item in items:
        if previous is not sentinel:
            yield previous, False
        previous = item
    if previous is not sentinel:
        yield previous, True


_HEALTH_KA = response_head(200, CT_TEXT, 2, True) + b"OK"
_HEALTH_CLOSE = response_head(200, CT_TEXT, 2, False) + b"OK"


def main(argv: list[str] | None = None) -> None:
    from gevent import monkey

    monkey.patch_all()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:  # 1,000+ concurrent streams need more descriptors than the usual soft limit of 1024
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    tls = {"certfile": args.tls_cert, "keyfile": args.tls_key} if args.tls_cert else {}
    server = StreamServer((args.host, args.port), FakeVendor().handle, backlog=4096, **tls)
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
