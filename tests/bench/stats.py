"""Percentiles and the per-stream verdicts of the streaming benchmark, with their definitions.

Definitions (measured at the client, per stream; "event" = one SSE ``data:`` event, or in a Responses
or Messages stream one text delta: tests/bench/events.py):

- time to first chunk (TTFC): from sending the request to receiving the first event;
- gap: the time between two consecutive events of one stream; the vendor sends one every
  ``interval`` (20 ms by default);
- stall: a gap longer than ``STALL_SECONDS`` (200 ms);
- delivered incrementally: at least ``INCREMENTAL_SHARE`` (80 %) of the stream's gaps are at least
  a quarter of the vendor's interval (5 ms). Events that reach the client in one read have a gap
  of ~0, so a stream relayed in one burst at the end scores 0 %, one relayed in bunches of two
  scores ~50 %, and one relayed event by event scores ~100 %; the 20 % slack absorbs scheduling
  jitter that brings two events close now and then;
- ok: HTTP 200, every expected event received, ending with ``[DONE]``, no error event, no
  client-side error or timeout;
- peak open: the most streams open at once at the client (request sent, answer not finished),
  which counts streams still waiting in the server's accept queue; peak served: the most streams
  at once between their first event and their end, i.e. streams the server was really relaying
  at the same time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INCREMENTAL_SHARE",
    "STALL_SECONDS",
    "StreamOutcome",
    "StreamRecord",
    "distribution_ms",
    "outcome_of",
    "peak_overlap",
    "percentile",
    "summarize_streams",
]

STALL_SECONDS = 0.2
INCREMENTAL_SHARE = 0.8


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def distribution_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50 / p90 / p99 / max of durations in seconds, as milliseconds."""
    ordered = sorted(seconds)

    def ms(p: float) -> float | None:
        value = percentile(ordered, p)
        return None if value is None else round(value * 1000, 3)

    return {"p50": ms(50), "p90": ms(90), "p99": ms(99), "max": ms(100)}


@dataclass
class StreamRecord:
    """What the stream client saw of one stream (times are time.perf_counter() values)."""

    sent: float
    status: int | None = None
    events: list[float] | None = None  # arrival time of each data event
    done: bool = False  # the last event was [DONE]
    error_events: int = 0
    keepalives: int = 0
    ended: float | None = None
    error: str | None = None  # client-side failure: connect, read, timeout, HTTP framing


@dataclass(frozen=True)
class StreamOutcome:
    """The verdict on one stream: small enough to keep hundreds of thousands of them."""

    ok: bool
    problem: str | None  # why not ok, as a short category
    ttfc: float | None
    duration: float | None
    stalls: int
    max_gap: float | None
    separate_share: float | None  # share of gaps >= interval / 4
    incremental: bool
    sent: float
    ended: float


def outcome_of(record: StreamRecord, expected_events: int, interval: float) -> StreamOutcome:
    """Judge one stream against the definitions in this module's docstring."""
    events = record.events or []
    ended = record.ended if record.ended is not None else record.sent
    problem = None
    if record.error:
        problem = record.error
    elif record.status != 200:
        problem = f"http_{record.status}"
    elif record.error_events:
        problem = "error_event"
    elif not record.done:
        problem = "no_done"
    elif len(events) != expected_events:
        problem = "event_count"
    gaps = [b - a for a, b in itertools.pairwise(events)]
    separate = sum(gap >= interval / 4 for gap in gaps) / len(gaps) if gaps else None
    return StreamOutcome(
        ok=problem is None,
        problem=problem,
        ttfc=events[0] - record.sent if events else None,
        duration=events[-1] - record.sent if events else None,
        stalls=sum(gap > STALL_SECONDS for gap in gaps),
        max_gap=max(gaps) if gaps else None,
        separate_share=separate,
        incremental=separate is not None and separate >= INCREMENTAL_SHARE,
        sent=record.sent,
        ended=ended,
    )


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (streams held at once)."""
    edges = sorted(point for start, end in intervals for point in ((start, 1), (end, -1)))
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def summarize_streams(outcomes: Sequence[StreamOutcome]) -> dict[str, Any]:
    """The figures the benchmark reports for a set of streams."""
    ok = [o for o in outcomes if o.ok]
    problems: dict[str, int] = {}
    for o in outcomes:
        if o.problem:
            problems[o.problem] = problems.get(o.problem, 0) + 1
    shares = [o.separate_share for o in ok if o.separate_share is not None]
    gaps = [o.max_gap for o in ok if o.max_gap is not None]
    return {
        "streams": len(outcomes),
        "ok": len(ok),
        "errors": len(outcomes) - len(ok),
        "problems": problems,
        "ttfc_ms": distribution_ms([o.ttfc for o in ok if o.ttfc is not None]),
        "duration_ms": distribution_ms([o.duration for o in ok if o.duration is not None]),
        # Share of ALL streams (a failed stream is not an incremental one).
        "incremental": sum(o.incremental for o in ok),
        "incremental_share": round(sum(o.incremental for o in ok) / len(outcomes), 4) if outcomes else None,
        "separate_gaps_p50": round(percentile(shares, 50), 4) if shares else None,
        "separate_gaps_min": round(min(shares), 4) if shares else None,
        "streams_with_stalls": sum(o.stalls > 0 for o in ok),
        "stalls": sum(o.stalls for o in ok),
        "max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
        "peak_open": peak_overlap((o.sent, o.ended) for o in outcomes),
        "peak_served": peak_overlap((o.sent + o.ttfc, o.ended) for o in outcomes if o.ttfc is not None),
    }
