"""The stream client: holds K concurrent SSE streams and timestamps every event.

Run as its own process (``python -m tests.bench.streamclient ...``) so its CPU is its own and the
benchmark can tell when the client, not the server, is the limit (it reports its CPU share). A
thread per stream saturates near 500 streams on a 2-core machine; two engines hold thousands:

- ``epoll`` (default, tests/bench/streamloop.py): every stream on one epoll loop;
- ``gevent`` (this module): a greenlet per stream over raw gevent sockets and a minimal HTTP/1.1
  chunked reader (tests/bench/http1.py). It costs about twice the CPU per event (21-31 µs against
  12-15 µs, all in, at 1,000 streams), so at 1,000 streams x 50 events/s it needs a whole core
  and, when the machine is busy, falls behind and reads events in pairs. Kept as an independent
  cross-check of the epoll engine's figures.

Burst mode (default): open K connections, then send all K requests at once (or spread over
``--ramp`` seconds) and read every stream to its end. Continuous mode (``--duration``): K
connections each start a new stream as soon as the last one ended, until the time is up (the soak).
Writes one JSON summary (tests/bench/stats.py defines every figure) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import gevent
import gevent.event

from tests.bench.events import DIALECTS, EventCounter
from tests.bench.http1 import Connection, HTTPError, build_post
from tests.bench.stats import StreamOutcome, StreamRecord, outcome_of, summarize_streams
from tests.bench.streamloop import Loop

__all__ = ["main", "read_stream"]


def read_stream(conn: Connection, request: bytes, record: StreamRecord, dialect: str = "chat") -> bool:
    """Send ``request`` and read its SSE answer into ``record``; True when the connection can be reused."""
    record.sent = time.perf_counter()
    conn.send(request)
    head = conn.read_head()
    record.status = head.status
    if head.status != 200:
        conn.read_body(head)
        return head.keep_alive
    counter = EventCounter(record, dialect)
    for data, arrived in conn.iter_body(head):
        if data:
            counter.feed(data, arrived)
    return head.keep_alive


def _failure(exc: BaseException) -> str:
    if isinstance(exc, gevent.Timeout):
        return "timeout"
    if isinstance(exc, HTTPError):
        return "http_framing" if "closed" not in str(exc) else "closed_early"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError):
        return f"os_error_{exc.errno}" if exc.errno else "os_error"
    return type(exc).__name__


class Client:
    """Where the streams go and how each is judged."""

    def __init__(self, args: argparse.Namespace, request: bytes) -> None:
        self.host: str = args.host
        self.port: int = args.port
        self.request = request
        self.timeout: float = args.timeout
        self.expected: int = args.expected_events
        self.interval: float = args.interval
        self.dialect: str = args.dialect

    def connect(self) -> Connection:
        return Connection(self.host, self.port, timeout=self.timeout)

    def one(self, conn: Connection, record: StreamRecord) -> bool:
        """Read one stream on ``conn``; False when the connection must not be reused."""
        try:
            with gevent.Timeout(self.timeout):
                return read_stream(conn, self.request, record, self.dialect)
        except (gevent.Timeout, OSError, HTTPError, ValueError) as exc:
            record.error = _failure(exc)
            return False
        finally:
            record.ended = time.perf_counter()

    def judge(self, record: StreamRecord) -> StreamOutcome:
        return outcome_of(record, self.expected, self.interval)


def burst(client: Client, streams: int, ramp: float) -> list[StreamOutcome]:
    """K streams at once: connect all first, then send every request (spread over ``ramp`` s)."""
    records = [StreamRecord(sent=0.0) for _ in range(streams)]
    connected = 0
    all_connected = gevent.event.Event()
    go = gevent.event.Event()

    def run(i: int) -> None:
        nonlocal connected
        record = records[i]
        conn = None
        try:
            conn = client.connect()
        except OSError as exc:
            record.sent = record.ended = time.perf_counter()
            record.error = f"connect_{_failure(exc)}"
        connected += 1
        if connected == streams:
            all_connected.set()
        if conn is None:
            return
        try:
            go.wait()
            if ramp:
                gevent.sleep(ramp * i / streams)
            client.one(conn, record)
        finally:
            conn.close()

    greenlets = [gevent.spawn(run, i) for i in range(streams)]
    all_connected.wait(client.timeout)
    go.set()
    gevent.joinall(greenlets)
    return [client.judge(record) for record in records]


def continuous(client: Client, streams: int, duration: float) -> list[StreamOutcome]:
    """K greenlets, each starting a new stream when its last one ends, for ``duration`` s."""
    outcomes: list[StreamOutcome] = []
    deadline = time.perf_counter() + duration

    def run(i: int) -> None:
        gevent.sleep(0.5 * i / streams)  # stagger the starts, like independent clients
        conn = None
        while time.perf_counter() < deadline:
            if conn is None:
                try:
                    conn = client.connect()
                except OSError as exc:
                    record = StreamRecord(sent=time.perf_counter(), ended=time.perf_counter())
                    record.error = f"connect_{_failure(exc)}"
                    outcomes.append(client.judge(record))
                    gevent.sleep(0.1)
                    continue
            record = StreamRecord(sent=0.0)
            reusable = client.one(conn, record)
            outcomes.append(client.judge(record))
            if not reusable:
                conn.close()
                conn = None
                if record.error:
                    gevent.sleep(0.05)  # a failing server must not turn this into a busy loop
        if conn is not None:
            conn.close()

    gevent.joinall([gevent.spawn(run, i) for i in range(streams)])
    return outcomes


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the streams, write the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--expected-events", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.02, help="the vendor's pause between events")
    parser.add_argument("--ramp", type=float, default=0.0, help="burst: spread the requests over this many s")
    parser.add_argument("--duration", type=float, default=0.0, help="continuous mode for this many s")
    parser.add_argument("--timeout", type=float, default=60.0, help="per stream, and per connect")
    parser.add_argument("--engine", choices=("epoll", "gevent"), default="epoll")
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default="chat",
        help="which events count (tests/bench/events.py): chat: every data event; responses: the text deltas of a "
        "Responses stream; messages: the text_delta content_block_delta events of an Anthropic Messages stream",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="an extra request header")
    args = parser.parse_args(argv)

    # Each stream is a socket: 1,000+ of them need more than the usual soft limit of 1,024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.streams + 64:
        sys.exit(f"the open-files limit ({hard}) is too low for {args.streams} streams; raise `ulimit -Hn`")

    with open(args.body_file, "rb") as f:
        body = f.read()
    headers = {"Accept": "text/event-stream", **dict(h.split(":", 1) for h in args.header)}
    client = Client(args, build_post(args.host, args.port, args.path, body, headers))
    started = time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    if args.engine == "epoll":
        loop = Loop(args.host, args.port, client.request, args.timeout, client.judge, client.dialect)
        outcomes = (
            loop.continuous(args.streams, args.duration) if args.duration else loop.burst(args.streams, args.ramp)
        )
    elif args.duration:
        outcomes = continuous(client, args.streams, args.duration)
    else:
        outcomes = burst(client, args.streams, args.ramp)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - started
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    summary = summarize_streams(outcomes)
    summary.update(
        engine=args.engine,
        mode="continuous" if args.duration else "burst",
        concurrency=args.streams,
        ramp_s=args.ramp,
        wall_s=round(wall, 3),
        client_cpu_s=round(cpu, 3),
        # The client is the limit when this nears 1.0 (one core).
        client_cpu_share=round(cpu / wall, 3) if wall else None,
    )
    with open(args.out, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
