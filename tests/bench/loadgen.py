"""A closed-loop HTTP load generator with gevent: the fallback when ``wrk`` is not installed.

Run as its own process (``python -m tests.bench.loadgen ...``): C greenlets, each with one
keep-alive connection, send the same POST back to back for the given time and record every
latency. Being Python, it tops out at a few thousand calls/s on one core, so it reports its own
CPU use: near 1.0 means the generator, not the server, set the pace.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import gevent

from tests.bench.http1 import Connection, HTTPError, build_post
from tests.bench.stats import percentile

__all__ = ["main", "run_load"]


def run_load(host: str, port: int, request: bytes, concurrency: int, duration: float) -> dict:
    """Drive the load; return calls, errors by kind, and the latency distribution in ms."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + duration

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def worker() -> None:
        conn: Connection | None = None
        while time.perf_counter() < deadline:
            try:
                if conn is None:
                    conn = Connection(host, port, timeout=10)
                started = time.perf_counter()
                conn.send(request)
                head = conn.read_head()
                conn.read_body(head)
                latencies.append(time.perf_counter() - started)
                if not 200 <= head.status < 300:
                    error(f"status_{head.status}")
                if not head.keep_alive:
                    conn.close()
                    conn = None
            except (OSError, HTTPError, ValueError) as exc:
                error("timeout" if isinstance(exc, TimeoutError) else "socket")
                if conn is not None:
                    conn.close()
                conn = None
                gevent.sleep(0.01)
        if conn is not None:
            conn.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_s": round(wall, 3),
        "rps": round(len(latencies) / wall, 1) if wall else 0.0,
        "errors": errors,
        "latency_ms": {
            "mean": round(sum(latencies) / len(latencies) * 1000, 3) if latencies else None,
            **{
                name: round(percentile(latencies, p) * 1000, 3) if latencies else None
                for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the load, write the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="an extra request header")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    with open(args.body_file, "rb") as f:
        request = build_post(args.host, args.port, args.path, f.read(), headers)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = run_load(args.host, args.port, request, args.concurrency, args.duration)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["loadgen_cpu_share"] = round(cpu / result["duration_s"], 3) if result["duration_s"] else None
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
