"""A lean OpenAI-compatible vendor for the benchmark: one epoll loop, answers built from templates.

Why not tests/support/fake_vendor.py: it spends about 50 µs of CPU per stream event (a greenlet, a timed
recv and a JSON dump for each), so 1,000 streams of one event every 20 ms (50,000 events/s) need
more than the whole 2-core machine before the router gets any; the direct path then stretches a
440 ms stream to 1-2 s. This server sends an event with one ``send`` from a timer heap (a few
µs) and answers a whole completion in tens of µs, so the router, not the vendor, is measured.

It answers what the router and the benchmark send, shaped exactly like the fake vendor's OpenAI
answers (same fields, same order), and nothing else:

- ``POST /<vendor>/.../chat/completions``: a whole ``chat.completion`` (with usage) or, with
  ``"stream": true``, SSE chunks: a role delta, one content delta per piece, a finish chunk, a usage
  chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``; chunked encoding,
  one event per chunk, the first with the headers and each next one ``interval`` seconds after
  the previous was sent. ``x_fake`` may set ``content_chunks`` (list of str) and ``interval`` (s);
  the content is otherwise ``Hello from <vendor>! You said: <last user text>`` in 5 pieces.
  ``--pieces N --interval S`` set the stream of a request without ``x_fake`` (N pieces
  ``tokenNN ``, S seconds apart): gateways such as Portkey drop unknown fields, so the benchmark
  gives every path the same stream this way.
- ``GET /health``: 200 ``OK``.

With ``--prefix-cache BLOCK`` it emulates a vendor's prompt cache as tests/support/fake_vendor.py's
``prefix_cache`` does: per vendor, credential (``Authorization``) and model, the usage's
``prompt_tokens_details.cached_tokens`` is the longest prefix of the request's messages seen
before, in whole blocks of BLOCK tokens (4 characters a token); the cache run uses it.

Faults, switched at run time for the failover benchmark (``POST /_control/fault`` with
``{"vendor": "<name>", "mode": "..."}``; control calls are not logged):

- ``ok``: answers as above;
- ``error``: every chat call gets 500 with an OpenAI-shaped error;
- ``stall``: the request is read and never answered (the connection stays open, silent);
- ``drop``: a stream sends its role chunk and its first content chunk, then the connection is
  closed mid-body; whole calls are answered as usual.

With ``--log-calls``, ``GET /_control/log`` returns every chat call received, oldest first, as
``[monotonic time, vendor, stream, mode]`` (``time.monotonic()`` is the system-wide
CLOCK_MONOTONIC on Linux, so other processes can place the calls on their own timeline);
``POST /_control/reset`` empties it and sets every vendor back to ``ok``.

HTTP/1.1 keep-alive and pipelining, HTTP/1.0 keep-alive when asked (``ab -k``); Content-Length request
bodies only. Start:
``python -m tests.bench.vendor [--port 0] [--pieces N --interval S]``; prints
``BENCH_VENDOR_LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import itertools
import os
import resource
import select
import signal
import socket
import sys
import time
from typing import Any

import orjson

__all__ = ["main"]

_IDS = itertools.count(1)
_PREFIX = os.urandom(4).hex()
_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_CLOSE_EVENTS = select.EPOLLHUP | select.EPOLLERR
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
)
MAX_REQUEST = 16 * 1024 * 1024
FAULTS = ("ok", "error", "stall", "drop")
_SERVER_ERROR = orjson.dumps(
    {"error": {"message": "The server had an error (bench vendor fault)", "type": "server_error", "code": None}}
)


def _id(prefix: str = "chatcmpl-") -> str:
    return f"{prefix}{_PREFIX}{next(_IDS):08x}"


# ``keep_alive`` for an HTTP/1.0 client that asked for it (ApacheBench's ``-k``): said in the answer.
_KEPT_10 = "HTTP/1.0 keep-alive"


def _response(status: str, ctype: bytes, body: bytes, keep_alive: bool | str) -> bytes:
    if keep_alive == _KEPT_10:
        connection = b"Connection: keep-alive\r\n"
    else:
        connection = b"" if keep_alive else b"Connection: close\r\n"
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        % (status.encode(), ctype, len(body), connection)
        + body
    )


def _text(vendor: str, body: dict[str, Any]) -> str:
    said = ""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            said = content if isinstance(content, str) else ""
            break
    return f"Hello from {vendor}! You said: {said[:200]}"


def _usage(body: dict[str, Any], text: str, cached: int | None = None) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content") or "")) // 4 + 1 for m in body.get("messages") or [] if isinstance(m, dict))
    completion = len(text) // 4 + 1
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt), "audio_tokens": 0}
    return usage


class PromptCache:
    """Every prompt prefix seen per (vendor, credential, model), as chained digests of whole blocks."""

    def __init__(self, block_tokens: int) -> None:
        self.block_chars = 4 * block_tokens
        self.block_tokens = block_tokens
        self.seen: dict[tuple[str, str, str], set[bytes]] = {}

    def cached_tokens(self, vendor: str, credential: str, body: dict[str, Any]) -> int:
        """The tokens of this prompt's longest prefix seen before; the prompt's prefixes are remembered."""
        messages = body.get("messages") or []
        text = "".join(f"{m.get('role')}\0{m.get('content') or ''}\0" for m in messages if isinstance(m, dict)).encode()
        seen = self.seen.setdefault((vendor, credential, str(body.get("model"))), set())
        size, previous, hits, missed = self.block_chars, b"", 0, False
        for start in range(0, len(text) - size + 1, size):
            previous = hashlib.blake2b(previous + text[start : start + size], digest_size=16).digest()
            if not missed and previous in seen:
                hits += 1
            else:
                missed = True
                seen.add(previous)
        return hits * self.block_tokens


def whole_answer(vendor: str, body: dict[str, Any], cached: int | None = None) -> bytes:
    """A chat.completion like the fake vendor's OpenAI one."""
    x_fake = body.get("x_fake") if isinstance(body.get("x_fake"), dict) else {}
    pieces = x_fake.get("content_chunks")
    text = "".join(pieces) if isinstance(pieces, list) else _text(vendor, body)
    return orjson.dumps(
        {
            "id": _id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(body, text, cached),
        }
    )


def stream_frames(
    vendor: str, body: dict[str, Any], default_pieces: list[str] | None = None, cached: int | None = None
) -> list[bytes]:
    """Every event of a streamed answer, each already framed as one HTTP chunk."""
    x_fake = body.get("x_fake") if isinstance(body.get("x_fake"), dict) else {}
    pieces = x_fake.get("content_chunks")
    if not isinstance(pieces, list):
        pieces = default_pieces
    if not isinstance(pieces, list):
        text = _text(vendor, body)
        step = max(len(text) // 5, 1)
        pieces = [text[i : i + step] for i in range(0, len(text), step)]
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    stream_id, created, model = _id(), int(time.time()), body.get("model")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c: dict[str, Any] = {
            "id": stream_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            c["usage"] = None
        return orjson.dumps(c)

    payloads = [chunk({"role": "assistant", "content": ""})]
    payloads += [chunk({"content": piece}) for piece in pieces]
    payloads.append(chunk({}, "stop"))
    if with_usage:
        usage = {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model}
        payloads.append(orjson.dumps({**usage, "choices": [], "usage": _usage(body, "".join(pieces), cached)}))
    payloads.append(b"[DONE]")
    frames = []
    for payload in payloads:
        event = b"data: " + payload + b"\n\n"
        frames.append(b"%x\r\n%s\r\n" % (len(event), event))
    return frames


class Conn:
    """One client connection: input buffer, output buffer, and the stream it is answering, if any."""

    __slots__ = (
        "closed",
        "fd",
        "http10",
        "inbuf",
        "keep_alive",
        "out",
        "server",
        "sock",
        "stalled",
        "stream",
        "writing",
    )

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = b""
        self.out = b""
        self.writing = False
        self.stream: list[bytes] | None = None
        self.keep_alive = True
        self.http10 = False
        self.closed = False
        self.stalled = False  # a request left unanswered on purpose: nothing more is read or answered

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            data = data[sent:]
            if not data:
                return
        self.out += data
        if not self.writing:
            self.writing = True
            self.server.epoll.modify(self.fd, _EPOLLIN | _EPOLLOUT)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if not self.out and self.writing:
            self.writing = False
            self.server.epoll.modify(self.fd, _EPOLLIN)
            if not self.keep_alive and self.stream is None:
                self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stream = None
        self.server.conns.pop(self.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.server.epoll.unregister(self.fd)
        self.sock.close()

    def readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbuf += data
        if len(self.inbuf) > MAX_REQUEST:
            self.close()
            return
        self.serve_buffered()

    def serve_buffered(self) -> None:
        """Answer every complete request in the buffer, in order; a stream holds the rest back."""
        while self.stream is None and not self.closed and self.keep_alive and not self.stalled:
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.inbuf[:end].decode("latin-1")
            lines = head.split("\r\n")
            length, close, asked, credential = 0, False, False, ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
                    asked = value.strip().lower() == "keep-alive"
                elif name == "authorization":
                    credential = value.strip()
            if len(self.inbuf) < end + 4 + length:
                return
            body = self.inbuf[end + 4 : end + 4 + length]
            self.inbuf = self.inbuf[end + 4 + length :]
            method, _, rest = lines[0].partition(" ")
            path = rest.rsplit(" ", 1)[0].split("?", 1)[0]
            http11 = lines[0].endswith("HTTP/1.1")
            self.keep_alive = not close and (http11 or asked)
            self.http10 = not http11
            self.answer(method, path, body, credential)
        if not self.keep_alive and not self.out and self.stream is None:
            self.close()

    def answer(self, method: str, path: str, raw: bytes, credential: str = "") -> None:
        ka: bool | str = _KEPT_10 if self.keep_alive and self.http10 else self.keep_alive
        if method == "GET" and path == "/health":
            self.write(_response("200 OK", b"text/plain", b"OK", ka))
            return
        if path.startswith("/_control/"):
            status, body = self.server.control(method, path, raw)
            self.write(_response(status, b"application/json", body, ka))
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self.write(_response("404 Not Found", b"application/json", b'{"error":{"message":"not found"}}', ka))
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.write(_response("400 Bad Request", b"application/json", b'{"error":{"message":"bad json"}}', ka))
            return
        vendor = path.strip("/").split("/", 1)[0]
        server = self.server
        stream = body.get("stream") is True
        mode = server.faults.get(vendor, "ok")
        if server.calls is not None:
            server.calls.append((time.monotonic(), vendor, stream, mode))
        if mode == "error":
            self.write(_response("500 Internal Server Error", b"application/json", _SERVER_ERROR, ka))
            return
        if mode == "stall":
            self.stalled = True
            return
        cache = server.prompt_cache
        cached = cache.cached_tokens(vendor, credential, body) if cache is not None else None
        if not stream:
            self.write(_response("200 OK", b"application/json", whole_answer(vendor, body, cached), ka))
            return
        x_fake = body.get("x_fake") if isinstance(body.get("x_fake"), dict) else {}
        interval = float(x_fake.get("interval") or server.interval)
        frames = stream_frames(vendor, body, server.pieces, cached)
        if mode == "drop":
            # The role chunk and the first content chunk, then the connection ends mid-body.
            frames = frames[:2]
            self.keep_alive = False
        else:
            frames.append(b"0\r\n\r\n")
        self.stream = frames
        self.write(SSE_HEAD + (b"" if ka else b"Connection: close\r\n") + b"\r\n" + frames[0])
        self.server.schedule(self, 1, interval)


class Server:
    """The epoll loop: accepts, reads requests, and sends stream events when they are due."""

    def __init__(
        self,
        host: str,
        port: int,
        pieces: list[str] | None = None,
        interval: float = 0.0,
        log_calls: bool = False,
        prefix_cache: int | None = None,
    ) -> None:
        self.prompt_cache = PromptCache(prefix_cache) if prefix_cache else None
        self.pieces = pieces  # the stream of a request without x_fake (None: the greeting in 5 pieces)
        self.interval = interval
        self.faults: dict[str, str] = {}  # vendor name -> fault mode; absent: ok
        # Off by default: the main benchmark sends millions of calls.
        self.calls: list[tuple[float, str, bool, str]] | None = [] if log_calls else None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), _EPOLLIN)
        self.conns: dict[int, Conn] = {}
        self._timers: list[tuple[float, int, Conn, int, float]] = []
        self._seq = itertools.count()

    def control(self, method: str, path: str, raw: bytes) -> tuple[str, bytes]:
        """The fault switch and the call log: (status line, JSON body)."""
        if method == "GET" and path == "/_control/log":
            return "200 OK", orjson.dumps(self.calls)
        if method == "POST" and path == "/_control/reset":
            if self.calls is not None:
                self.calls.clear()
            self.faults.clear()
            return "200 OK", b"{}"
        if method == "POST" and path == "/_control/fault":
            try:
                change = orjson.loads(raw)
            except orjson.JSONDecodeError:
                change = None
            if not isinstance(change, dict) or change.get("mode") not in FAULTS or not change.get("vendor"):
                return "400 Bad Request", orjson.dumps({"error": {"message": f"want vendor and mode in {FAULTS}"}})
            self.faults[str(change["vendor"])] = change["mode"]
            return "200 OK", orjson.dumps(self.faults)
        return "404 Not Found", b'{"error":{"message":"not found"}}'

    def schedule(self, conn: Conn, index: int, interval: float) -> None:
        heapq.heappush(self._timers, (time.monotonic() + interval, next(self._seq), conn, index, interval))

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:
                return  # e.g. out of descriptors: the client will see a reset and report it
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(self, sock)
            self.conns[conn.fd] = conn
            self.epoll.register(conn.fd, _EPOLLIN)

    def _due(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, conn, index, interval = heapq.heappop(timers)
            frames = conn.stream
            if frames is None or conn.closed:
                continue
            conn.write(frames[index])
            if index + 1 < len(frames):
                # Paced from the moment this event went out, like a vendor generating tokens.
                heapq.heappush(timers, (now + interval, next(self._seq), conn, index + 1, interval))
                continue
            conn.stream = None
            if conn.keep_alive:
                conn.serve_buffered()
            elif not conn.out:
                conn.close()

    def serve_forever(self) -> None:
        listener = self.listener.fileno()
        timers = self._timers
        while True:
            timeout = max(timers[0][0] - time.monotonic(), 0.0) if timers else -1
            for fd, mask in self.epoll.poll(timeout):
                if fd == listener:
                    self._accept()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if mask & _EPOLLOUT:
                    conn.flush()
                if mask & (_EPOLLIN | _CLOSE_EVENTS) and not conn.closed:
                    conn.readable()
            self._due()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM / SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pieces", type=int, help="stream of a request without x_fake: this many pieces")
    parser.add_argument("--interval", type=float, default=0.0, help="... this many seconds apart")
    parser.add_argument("--log-calls", action="store_true", help="keep the call log (GET /_control/log)")
    parser.add_argument("--prefix-cache", type=int, metavar="BLOCK", help="emulate a prompt cache, BLOCK-token blocks")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pieces = [f"token{i:02d} " for i in range(args.pieces)] if args.pieces is not None else None
    server = Server(args.host, args.port, pieces, args.interval, args.log_calls, args.prefix_cache)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    sys.stdout.write(f"BENCH_VENDOR_LISTENING {server.port}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
