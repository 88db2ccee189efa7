"""Mixed constant load for the failover benchmark: whole calls and streams side by side, every call recorded.

Run as its own process (``python -m tests.bench.mixload ...``): ``--whole`` greenlets send whole
chat calls back to back, ``--streams`` greenlets read streams back to back, each on its own
keep-alive connection, for ``--duration`` seconds. Every call becomes one row of the JSON written
to ``--out``: ``[kind, sent, ended, ttfc, status, problem, vendor, attempts]`` where kind is
``"whole"`` or ``"stream"``, times are ``time.monotonic()`` (CLOCK_MONOTONIC, shared with the
vendor's call log), ttfc is the seconds to the first event (streams) or None, problem is None for a
call the client got in full (tests/bench/stats.py judges streams), and vendor and attempts are
the router's ``X-Vendor-Source`` and ``X-Router-Attempts`` headers.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import gevent

from tests.bench.events import EventCounter
from tests.bench.http1 import Connection, HTTPError, build_post
from tests.bench.stats import StreamRecord, outcome_of

__all__ = ["main", "run_mix"]

Row = list[Any]


def _problem(exc: BaseException) -> str:
    if isinstance(exc, gevent.Timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, HTTPError):
        return "closed_early" if "closed" in str(exc) else "http_framing"
    return "reset" if isinstance(exc, ConnectionResetError) else "socket"


def _whole(conn: Connection, request: bytes) -> Row:
    sent = time.monotonic()
    conn.send(request)
    head = conn.read_head()
    conn.read_body(head)
    problem = None if head.status == 200 else f"http_{head.status}"
    vendor, attempts = head.headers.get("x-vendor-source"), head.headers.get("x-router-attempts")
    return ["whole", sent, time.monotonic(), None, head.status, problem, vendor, attempts]


def _stream(conn: Connection, request: bytes, expected: int, interval: float) -> Row:
    record = StreamRecord(sent=time.monotonic())
    conn.send(request)
    head = conn.read_head()
    record.status = head.status
    if head.status != 200:
        conn.read_body(head)
    else:
        counter = EventCounter(record)
        for data, _ in conn.iter_body(head):
            if data:
                counter.feed(data, time.monotonic())
    record.ended = time.monotonic()
    outcome = outcome_of(record, expected, interval)
    vendor, attempts = head.headers.get("x-vendor-source"), head.headers.get("x-router-attempts")
    ttfc = record.events[0] - record.sent if record.events else None
    return ["stream", record.sent, record.ended, ttfc, head.status, outcome.problem, vendor, attempts]


def run_mix(
    host: str,
    port: int,
    whole_request: bytes,
    stream_request: bytes,
    whole: int,
    streams: int,
    duration: float,
    expected: int,
    interval: float,
    timeout: float,
) -> list[Row]:
    """Drive the load for ``duration`` s; return one row per call (see the module docstring)."""
    rows: list[Row] = []
    deadline = time.monotonic() + duration

    def client(kind: str) -> None:
        conn: Connection | None = None
        while time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = Connection(host, port, timeout=timeout)
                with gevent.Timeout(timeout):
                    if kind == "whole":
                        row = _whole(conn, whole_request)
                    else:
                        row = _stream(conn, stream_request, expected, interval)
                rows.append(row)
                if row[5] is not None and row[4] == 200:
                    conn.close()  # a broken stream leaves the connection unusable
                    conn = None
            except (gevent.Timeout, OSError, HTTPError, ValueError) as exc:
                rows.append([kind, sent, time.monotonic(), None, None, _problem(exc), None, None])
                if conn is not None:
                    conn.close()
                conn = None
                gevent.sleep(0.01)  # a refusing server must not turn this into a busy loop
        if conn is not None:
            conn.close()

    kinds = ["whole"] * whole + ["stream"] * streams
    gevent.joinall([gevent.spawn(client, kind) for kind in kinds])
    return rows


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the load, write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--whole-body-file", required=True)
    parser.add_argument("--stream-body-file", required=True)
    parser.add_argument("--whole", type=int, required=True, help="clients sending whole calls")
    parser.add_argument("--streams", type=int, required=True, help="clients reading streams")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--expected-events", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True, help="the vendor's pause between stream events")
    parser.add_argument("--timeout", type=float, default=30.0, help="per call")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with open(args.whole_body_file, "rb") as f:
        whole = build_post(args.host, args.port, args.path, f.read())
    with open(args.stream_body_file, "rb") as f:
        stream = build_post(args.host, args.port, args.path, f.read(), {"Accept": "text/event-stream"})
    rows = run_mix(
        args.host,
        args.port,
        whole,
        stream,
        args.whole,
        args.streams,
        args.duration,
        args.expected_events,
        args.interval,
        args.timeout,
    )
    with open(args.out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
