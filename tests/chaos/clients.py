"""The chaos run's clients: mixed, misbehaving, every request recorded. A process of its own.

``python -m tests.chaos.clients --port P --duration S --out rows.jsonl`` runs one greenlet per
persona (PERSONAS: name -> how many) against nginx on 127.0.0.1:P, each sending request after
request on its own keep-alive connection (a new one when the server closes it), with a short
pause between, until ``--duration`` seconds have passed; then each finishes the request it is in
(at most REQUEST_TIMEOUT) and the process exits. Nothing is retried: every request is one row.

Each row is a JSON line: ``{"id", "persona", "api", "stream", "t0", "t_head", "t_end" (time.time()),
"status", "vendor", "attempts" (the router's X-Vendor-Source / X-Router-Attempts), "outcome",
"detail", "events"}``. ``id`` is the X-Request-ID sent, which nginx passes on and the router logs
on the request's access line. ``outcome``:

- ``ok``: a 2xx whose answer is complete: a whole answer of the right shape (choices, a completed
  response, a message, one embedding per input), or a stream that reached its end ([DONE],
  response.completed, message_stop) without an error event;
- ``left``: the client closed the stream on purpose after its first content event;
- ``http_error``: a non-2xx status (``detail``: the error's code or the start of the body);
- ``error_in_body``: a 2xx whole answer that is an error or not an answer;
- ``stream_error``: a 2xx stream that brought an error event (``detail``: its message);
- ``stream_cut``: a 2xx stream that ended (or stalled past the timeout) without its end;
- ``no_answer``: no response head (refused, reset, closed, timed out: ``detail`` says which).

Personas: whole and streamed chat completions (also pinned to ``model-a``, whose vendor has two
keys), Responses, embeddings and Anthropic Messages, plus streams whose client leaves after the
first content event, streams read slowly (a 4 KiB receive buffer, 128 bytes every 50 ms), and
requests whose body is sent slowly (in 4 pieces over 1.5 s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import time
from collections.abc import Iterator
from typing import IO, Any

import gevent
from gevent import socket as gsocket

from tests.bench.http1 import ChunkedDecoder, Head, HTTPError, parse_head

__all__ = ["PERSONAS", "main"]

APP_KEY = "ck-chaos-app-0123456789"
AGENT_KEY = "ck-chaos-agent-0123456789"
REQUEST_TIMEOUT = 45.0
THINK = (0.1, 0.4)  # seconds between two requests of one persona, uniformly

# persona -> (api, stream, behaviour, count)
PERSONAS: dict[str, tuple[str, bool, str, int]] = {
    "chat": ("chat", False, "normal", 3),
    "chat-stream": ("chat", True, "normal", 3),
    "chat-pinned": ("chat-pinned", False, "normal", 1),
    "chat-pinned-stream": ("chat-pinned", True, "normal", 1),
    "responses": ("responses", False, "normal", 2),
    "responses-stream": ("responses", True, "normal", 2),
    "embeddings": ("embeddings", False, "normal", 2),
    "messages": ("messages", False, "normal", 2),
    "messages-stream": ("messages", True, "normal", 2),
    "chat-stream-leaver": ("chat", True, "leave", 1),
    "messages-stream-leaver": ("messages", True, "leave", 1),
    "chat-stream-slow-reader": ("chat", True, "slow_read", 1),
    "responses-stream-slow-reader": ("responses", True, "slow_read", 1),
    "chat-slow-body": ("chat", False, "slow_body", 1),
    "messages-stream-slow-body": ("messages", True, "slow_body", 1),
}

PATHS = {
    "chat": "/v1/chat/completions",
    "chat-pinned": "/v1/chat/completions",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
    "messages": "/v1/messages",
}


def request_body(api: str, stream: bool, number: int) -> dict[str, Any]:
    text = f"chaos request {number}: say something about the weather in a few words"
    if api in ("chat", "chat-pinned"):
        model = "model-a" if api == "chat-pinned" else "any-model"
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    elif api == "responses":
        body = {"model": "any-model", "input": text}
    elif api == "embeddings":
        return {"model": "any-model", "input": [text, "second input"]}
    else:
        body = {"model": "any-model", "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


def build_request(port: int, api: str, body: bytes, request_id: str) -> tuple[bytes, bytes]:
    """(head, body) of one keep-alive POST."""
    if api == "messages":
        auth = f"x-api-key: {AGENT_KEY}\r\nanthropic-version: 2023-06-01"
    else:
        auth = f"Authorization: Bearer {APP_KEY}"
    head = (
        f"POST {PATHS[api]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\nX-Request-ID: {request_id}\r\n{auth}\r\n\r\n"
    )
    return head.encode(), body


class Conn:
    """One client connection; ``slow`` reads 128 bytes every 50 ms through a small receive buffer."""

    def __init__(self, port: int, slow: bool) -> None:
        self.slow = slow
        self.sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slow:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            self.sock.connect(("127.0.0.1", port))
        except BaseException:
            self.sock.close()
            raise
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.reusable = True

    def close(self) -> None:
        self.sock.close()

    def recv(self) -> bytes:
        if self.slow:
            gevent.sleep(0.05)
        data = self.sock.recv(128 if self.slow else 65536)
        if not data:
            raise HTTPError("connection closed by the server")
        return data

    def read_head(self) -> Head:
        while True:
            while b"\r\n\r\n" not in self.buf:
                if len(self.buf) > 65536:
                    raise HTTPError("response head too large")
                self.buf += self.recv()
            raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
            head = parse_head(raw)
            if head is not None:
                return head

    def body(self, head: Head) -> Iterator[bytes]:
        """The body, read by read (chunked, Content-Length, or until the server closes)."""
        if head.chunked:
            decoder = ChunkedDecoder()
            data, self.buf = self.buf, b""
            while True:
                if data:
                    yield decoder.feed(data)
                if decoder.done:
                    self.buf = decoder.leftover
                    return
                data = self.recv()
        length = head.length
        if length is not None:
            while len(self.buf) < length:
                self.buf += self.recv()
            body, self.buf = self.buf[:length], self.buf[length:]
            yield body
            return
        self.reusable = False
        data, self.buf = self.buf, b""
        if data:
            yield data
        while data := self.sock.recv(65536):
            yield data


class Row(dict):
    pass


def sse_events(chunks: Iterator[bytes]) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of each event; comments are skipped."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        while b"\n\n" in pending:
            raw, pending = pending.split(b"\n\n", 1)
            name, data = None, []
            for line in raw.decode("utf-8", "replace").split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
            if data:
                yield name, "\n".join(data)


def judge_stream(api: str, name: str | None, data: str) -> str | None:
    """'end', 'error', 'content' or None for one event of ``api``'s stream."""
    if api in ("chat", "chat-pinned"):
        if data == "[DONE]":
            return "end"
        event = json.loads(data)
        if event.get("error") is not None:
            return "error"
        choices = event.get("choices") or []
        return "content" if choices and (choices[0].get("delta") or {}).get("content") else None
    event = json.loads(data)
    kind = event.get("type")
    if api == "responses":
        if kind == "response.completed":
            return "end"
        if kind in ("error", "response.failed"):
            return "error"
        return "content" if kind == "response.output_text.delta" else None
    if kind == "message_stop":
        return "end"
    if kind == "error":
        return "error"
    return "content" if kind == "content_block_delta" else None


def whole_problem(api: str, answer: Any) -> str | None:
    """Why a 2xx whole answer is not an answer, or None."""
    if not isinstance(answer, dict):
        return "not a JSON object"
    if answer.get("error"):
        return f"error: {str(answer['error'])[:120]}"
    if api in ("chat", "chat-pinned"):
        ok = bool(answer.get("choices"))
    elif api == "responses":
        ok = answer.get("status") == "completed"
    elif api == "embeddings":
        ok = len(answer.get("data") or []) == 2
    else:
        ok = answer.get("type") == "message" and bool(answer.get("content"))
    return None if ok else f"not an answer: {json.dumps(answer)[:120]}"


def error_detail(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict):
            return f"{error.get('code') or error.get('type')}: {str(error.get('message'))[:100]}"
    except (ValueError, AttributeError):
        pass
    return body[:120].decode("utf-8", "replace")


def one_request(conn: Conn, port: int, persona: str, number: int, row: Row) -> None:
    api, stream, behaviour, _ = PERSONAS[persona]
    body = json.dumps(request_body(api, stream, number)).encode()
    head, body = build_request(port, api, body, row["id"])
    if behaviour == "slow_body":
        conn.sock.sendall(head)
        quarter = max(len(body) // 4, 1)
        for start in range(0, len(body), quarter):
            conn.sock.sendall(body[start : start + quarter])
            if start + quarter < len(body):
                gevent.sleep(0.5)
    else:
        conn.sock.sendall(head + body)
    answer = conn.read_head()
    row["t_head"] = time.time()
    row["status"] = answer.status
    row["vendor"] = answer.headers.get("x-vendor-source")
    row["attempts"] = int(answer.headers.get("x-router-attempts") or 0)
    if answer.headers.get("connection", "").lower() == "close":
        conn.reusable = False
    if not 200 <= answer.status < 300:
        row["outcome"], row["detail"] = "http_error", error_detail(b"".join(conn.body(answer)))
        return
    if not stream or "text/event-stream" not in answer.headers.get("content-type", ""):
        try:
            problem = whole_problem(api, json.loads(b"".join(conn.body(answer))))
        except ValueError:
            problem = "not JSON"
        row["outcome"], row["detail"] = ("ok", None) if problem is None else ("error_in_body", problem)
        if stream and problem is None:
            row["outcome"], row["detail"] = "error_in_body", "a whole answer to a stream request"
        return
    events = 0
    row["outcome"] = "stream_cut"
    for name, data in sse_events(conn.body(answer)):
        try:
            verdict = judge_stream(api, name, data)
        except ValueError:
            row["detail"] = f"an event that is not JSON: {data[:80]}"
            continue
        if verdict == "content":
            events += 1
            if behaviour == "leave":
                row["outcome"], row["events"] = "left", events
                conn.reusable = False
                return
        elif verdict == "error":
            row["outcome"], row["detail"] = "stream_error", data[:200]
        elif verdict == "end" and row["outcome"] != "stream_error":
            row["outcome"] = "ok"
    row["events"] = events
    if row["outcome"] == "stream_cut" and not row.get("detail"):
        row["detail"] = f"the stream ended without its end after {events} content events"


def persona_loop(persona: str, index: int, port: int, until: float, out: IO[str], numbers: Iterator[int]) -> None:
    behaviour = PERSONAS[persona][2]
    rng = random.Random(f"{persona}-{index}")
    conn: Conn | None = None
    gevent.sleep(rng.uniform(0, 1))  # not all at once
    while time.time() < until:
        number = next(numbers)
        row = Row(
            id=f"chaos-{os.getpid()}-{number}",
            persona=persona,
            api=PERSONAS[persona][0],
            stream=PERSONAS[persona][1],
            t0=time.time(),
            t_head=None,
            t_end=None,
            status=None,
            vendor=None,
            attempts=None,
            outcome="no_answer",
            detail=None,
            events=None,
        )
        try:
            with gevent.Timeout(REQUEST_TIMEOUT):
                if conn is None:
                    conn = Conn(port, slow=behaviour == "slow_read")
                one_request(conn, port, persona, number, row)
        except gevent.Timeout:
            row["detail"] = "timeout"
            if row["status"] is not None and row["outcome"] == "stream_cut":
                row["detail"] = f"no end within {REQUEST_TIMEOUT:g} s"
            if conn is not None:
                conn.reusable = False
        except (OSError, HTTPError) as exc:
            kind = type(exc).__name__
            if row["status"] is None:
                row["outcome"], row["detail"] = "no_answer", f"{kind}: {exc}"[:160]
            elif row["outcome"] in ("stream_cut", "no_answer"):
                row["outcome"], row["detail"] = "stream_cut", f"{kind}: {exc}"[:160]
            if conn is not None:
                conn.reusable = False
        row["t_end"] = time.time()
        out.write(json.dumps(row) + "\n")
        out.flush()
        if conn is not None and not conn.reusable:
            conn.close()
            conn = None
        gevent.sleep(rng.uniform(*THINK))
    if conn is not None:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    until = time.time() + args.duration
    numbers = itertools.count(1)
    with open(args.out, "a") as out:
        loops = [
            gevent.spawn(persona_loop, persona, i, args.port, until, out, numbers)
            for persona, (_, _, _, count) in PERSONAS.items()
            for i in range(count)
        ]
        gevent.joinall(loops, timeout=args.duration + REQUEST_TIMEOUT + 30)
        gevent.killall(loops, timeout=5)
    print(f"CHAOS_CLIENTS_DONE {next(numbers) - 1}", flush=True)


if __name__ == "__main__":
    main()
