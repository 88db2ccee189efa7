"""The chaos run's verdict: client rows classified, resources per period, logs read, as Markdown.

Classification of one client request (``classify``):

- ``ok``; ``left`` (the client closed the stream on purpose: not an error);
- ``limited``: a 429 (the rate limit is set high enough that there should be none);
- ``unavoidable``: a stream that started with a 2xx and then brought an error event or was cut,
  answered by the flapping vendor (``X-Vendor-Source``), while that vendor was in a mode that
  breaks committed streams (faults.BREAKS_STREAMS) at some moment between the response head and
  the end of the stream: the router had committed the answer to that vendor and can only end it;
- ``avoidable``: everything else that is not complete: any non-2xx, a 2xx whole answer that is
  an error, a stream broken by anything but the flapping vendor, no answer at all.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.chaos.cluster import FLAKY
from tests.chaos.faults import BREAKS_STREAMS, Timeline
from tests.chaos.observe import Sample

__all__ = ["classify", "report"]

CLASSES = ("ok", "left", "limited", "unavoidable", "avoidable")
# A worker's RSS "grows" when its fitted trend over its life after the warm-up rises by more than this.
RSS_GROWTH_MB = 4.0
RSS_GROWTH_SHARE = 0.05
# A worker's own warm-up: a new worker's first minute is not judged.
WORKER_WARMUP = 60.0


def classify(row: dict[str, Any], timeline: Timeline) -> str:
    outcome = row["outcome"]
    if outcome in ("ok", "left"):
        return outcome
    if row["status"] == 429:
        return "limited"
    status = row["status"] or 0
    if (
        row["stream"]
        and 200 <= status < 300
        and outcome in ("stream_error", "stream_cut")
        and row["vendor"] == FLAKY
        and timeline.modes_between(row["t0"], row["t_end"]) & BREAKS_STREAMS
    ):
        return "unavoidable"
    return "avoidable"


# ---- logs


def _json_lines(path: Path) -> list[dict[str, Any]]:
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = {"raw": line}
        entries.append(entry if isinstance(entry, dict) else {"raw": line})
    return entries


def _shape(message: str) -> str:
    """A log message with its numbers, ids and addresses blanked, to count messages by kind."""
    message = re.sub(r"[0-9a-f]{16,}", "<id>", message)
    message = re.sub(r"\d+(\.\d+)?", "N", message)
    return message[:160]


def read_logs(router_logs: dict[str, Path], nginx_dir: Path) -> dict[str, Any]:
    access: dict[str, dict[str, Any]] = {}
    tracebacks: list[str] = []
    by_level: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for name, path in router_logs.items():
        for entry in _json_lines(path):
            raw = entry.get("raw")
            if raw is not None:
                if "Traceback" in raw:
                    tracebacks.append(f"{name}: {raw[:300]}")
                if raw.strip():
                    problems[f"{name} (not JSON) {_shape(raw)}"] += 1
                continue
            if entry.get("exception") or "Traceback" in str(entry.get("message", "")):
                tracebacks.append(f"{name}: {entry.get('message')}\n{str(entry.get('exception'))[:2000]}")
            level = str(entry.get("level", "?"))
            by_level[level] += 1
            if entry.get("logger") == "router.access":
                access[entry.get("request_id", "-")] = {**entry, "instance": name}
                statuses[f"{entry.get('path')} {entry.get('status')}"] += 1
            elif level in ("warning", "error", "critical"):
                problems[f"{level} {entry.get('logger')}: {_shape(str(entry.get('message')))}"] += 1
    nginx_access = {e.get("request_id"): e for e in _json_lines(nginx_dir / "access.log") if "request_id" in e}
    nginx_errors: Counter[str] = Counter()
    error_log = nginx_dir / "error.log"
    for line in error_log.read_text(errors="replace").splitlines() if error_log.exists() else []:
        match = re.match(r"\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)", line)
        if match and match.group(1) not in ("info", "notice", "debug"):
            text = re.sub(r", client: .*", "", match.group(2))
            nginx_errors[f"[{match.group(1)}] {_shape(text)}"] += 1
    return {
        "access": access,
        "nginx_access": nginx_access,
        "tracebacks": tracebacks,
        "levels": dict(by_level),
        "problems": problems,
        "router_statuses": statuses,
        "nginx_errors": nginx_errors,
    }


# ---- resources


def _fit_rise(points: list[tuple[float, float]]) -> float:
    """The rise of the least-squares line through ``points`` from the first x to the last."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return slope * (xs[-1] - xs[0])


def worker_growth(samples: list[Sample], after: float, min_span: float) -> list[dict[str, Any]]:
    """Each worker sampled for at least ``min_span`` s after ``after`` and after its own first
    WORKER_WARMUP seconds (a worker forked by a reload or restart loads the app, then warms up
    under load, as the first workers did before ``after``): its RSS trend."""
    first_seen: dict[int, float] = {}
    series: dict[tuple[str, int], list[tuple[float, dict[str, int]]]] = defaultdict(list)
    for sample in samples:
        for name, workers in sample.workers.items():
            for pid, figures in workers.items():
                first_seen.setdefault(pid, sample.at)
                if sample.at >= max(after, first_seen[pid] + WORKER_WARMUP):
                    series[(name, pid)].append((sample.at, figures))
    rows = []
    for (name, pid), points in sorted(series.items()):
        span = points[-1][0] - points[0][0]
        if span < min_span:
            continue
        rss = [(t, f["rss_kb"] / 1024) for t, f in points]
        rise = _fit_rise(rss)
        first = rss[0][1]
        rows.append(
            {
                "instance": name,
                "pid": pid,
                "from_s": points[0][0],
                "span_s": span,
                "rss_first_mb": first,
                "rss_last_mb": rss[-1][1],
                "rss_trend_mb": rise,
                "fds_range": (min(f["fds"] for _, f in points), max(f["fds"] for _, f in points)),
                "grows": rise > max(RSS_GROWTH_MB, RSS_GROWTH_SHARE * first),
            }
        )
    return rows


def _dead_sockets(kinds: dict[str, int]) -> int:
    """Sockets whose connection is over but whose descriptor is still held: closed by the peer
    (close_wait) or gone from the kernel's TCP table (closed). A connection pool holds such a one
    until it hands it out again and finds it dead (after a Redis restart: Redis's pooled ones)."""
    return sum(
        count
        for kind, count in kinds.items()
        if kind == "socket (not TCP)" or (kind.startswith("tcp ") and kind.endswith((" close_wait", " close")))
    )


def _idle_problems(kinds: dict[str, int], baseline: dict[str, int]) -> list[str]:
    """Descriptors an idle worker should not hold: more of a kind than an idle worker had before the load.

    Not counted: the pools' established connections to vendors and Redis, and their dead sockets
    (both reported beside), and metrics files as long as there are at most two per kind (a
    worker's own, and its master's reload counter, which workers forked after a SIGHUP inherit).
    """
    problems = []
    for kind, count in sorted(kinds.items()):
        if kind in ("tcp vendor established", "tcp redis established") or _dead_sockets({kind: count}):
            continue
        if kind.startswith("metrics file") and count <= 2:
            continue
        if count > baseline.get(kind, 0):
            problems.append(f"{kind} x{count} (idle before: {baseline.get(kind, 0)})")
    return problems


def idle_check(before: Sample, after: Sample) -> dict[str, Any]:
    """After the load: streams in flight 0, no client connection held, no descriptor an idle worker lacks."""
    baseline: dict[str, int] = {}
    for workers in before.workers.values():
        for figures in workers.values():
            for kind, count in (figures.get("kinds") or {}).items():
                baseline[kind] = max(baseline.get(kind, 0), count)
    workers = []
    for name, ws in after.workers.items():
        for pid, figures in ws.items():
            kinds = figures.get("kinds") or {}
            problems = _idle_problems(kinds, baseline)
            workers.append(
                {"instance": name, "pid": pid, **figures, "problems": problems, "dead": _dead_sockets(kinds)}
            )
    streams = {name: (m or {}).get("router_streams_in_flight") for name, m in after.metrics.items()}
    ok = (
        all(value == 0 for value in streams.values())
        and all(w["clients"] == 0 and not w["problems"] for w in workers)
        and len(workers) == sum(len(ws) for ws in before.workers.values())
    )
    return {"streams_in_flight": streams, "workers": workers, "baseline": baseline, "ok": ok}


# ---- the report


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _worker_cell(figures: dict[str, int] | None, new: bool) -> str:
    if figures is None:
        return "-"
    mark = "*" if new else ""
    rss = figures["rss_kb"] / 1024
    conns = f"{figures['clients']}/{figures['vendors']}/{figures['redis']}"
    return f"{rss:.0f} MB · {figures['fds']} fd · {conns} conn{mark}"


def report(
    rows: list[dict[str, Any]],
    timeline: Timeline,
    samples: list[Sample],
    before: Sample,
    after: Sample,
    logs: dict[str, Any],
    start: float,
    duration: float,
    period: float,
    warmup: float,
    command: str,
    leftovers: list[int],
) -> tuple[str, dict[str, Any]]:
    classes = [classify(row, timeline) for row in rows]
    out: list[str] = []
    totals = Counter(classes)

    # Requests by persona and class.
    by_persona: dict[str, Counter[str]] = defaultdict(Counter)
    for row, cls in zip(rows, classes, strict=True):
        by_persona[row["persona"]][cls] += 1
    table = [[persona, sum(c.values()), *(c[cls] for cls in CLASSES)] for persona, c in sorted(by_persona.items())]
    table.append(["**all**", len(rows), *(f"**{totals[cls]}**" for cls in CLASSES)])
    out.append("Requests by client kind and outcome:\n")
    out.append(_table(["client", "requests", *CLASSES], table))

    # Per period: events, outcomes, resources.
    periods = max(round(duration / period), 1)
    unit = "minute" if period == 60 else f"{period:g} s"
    events_in: dict[int, list[str]] = defaultdict(list)
    for event in timeline.events:
        events_in[int((event["start"] - start + 1) // period)].append(event["kind"])
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for row, cls in zip(rows, classes, strict=True):
        counts[min(int((row["t0"] - start) // period), periods - 1)][cls] += 1
    instances = sorted({name for s in samples for name in s.workers})
    header = ["t", "event", "requests", "unavoidable", "avoidable"]
    for name in instances:
        header += [f"{name} worker 1", f"{name} worker 2"]
    header += ["streams in flight", "load avg"]
    resource_rows = []
    seen: set[int] = set()
    marks: list[tuple[str, Sample | None, int | None]] = [("before", before, None)]
    for p in range(periods):
        at = start + (p + 1) * period
        sample = min(samples, key=lambda s: abs(s.at - at)) if samples else None
        marks.append((f"{_clock(p * period)}-{_clock((p + 1) * period)}", sample, p))
    marks.append(("after", after, None))
    for label, sample, p in marks:
        c = counts.get(p, Counter()) if p is not None else None
        cells: list[Any] = [
            label,
            ", ".join(events_in.get(p, []))
            if p is not None
            else ("load stopped, settled" if label == "after" else "idle"),
            sum(c.values()) if c is not None else "",
            c["unavoidable"] if c is not None else "",
            c["avoidable"] if c is not None else "",
        ]
        for name in instances:
            workers = sorted((sample.workers.get(name) or {}).items()) if sample else []
            for slot in range(2):
                if slot < len(workers):
                    pid, figures = workers[slot]
                    cells.append(_worker_cell(figures, pid not in seen and label != "before"))
                    seen.add(pid)
                else:
                    cells.append("-")
        streams = [
            (sample.metrics.get(name) or {}).get("router_streams_in_flight") if sample else None for name in instances
        ]
        cells.append(" + ".join("-" if v is None else f"{v:.0f}" for v in streams))
        cells.append(f"{sample.load:.1f}" if sample else "-")
        resource_rows.append(cells)
    out.append(
        f"\nPer {unit} (requests by when they started; resources sampled at the end of the period; per worker: RSS · "
        "open descriptors · TCP connections from nginx (= greenlets serving requests) / to vendors / to Redis; "
        "* = a worker not seen at the previous sample row):\n"
    )
    out.append(_table(header, resource_rows))

    lags = sorted(s.lag for s in samples)
    if lags:
        out.append(
            f"\nMachine: load average {min(s.load for s in samples):.1f}-{max(s.load for s in samples):.1f} on "
            f"{os.cpu_count()} CPUs; the sampler woke up to {lags[-1]:.1f} s late "
            f"(median {lags[len(lags) // 2]:.2f} s): "
            "a late wake-up is a stall of the whole machine, which every process of the run also had."
        )

    # Growth and idle.
    growth = worker_growth(samples, start + warmup, min_span=min(120.0, duration / 4))
    idle = idle_check(before, after)
    grown = [g for g in growth if g["grows"]]
    out.append(
        f"\nGrowth after the first {warmup:.0f} s and each worker's own first {WORKER_WARMUP:.0f} s (RSS trend "
        f"over the worker's life, least squares; grows = more than {RSS_GROWTH_MB:g} MB and "
        f"{RSS_GROWTH_SHARE:.0%}):\n"
    )
    out.append(
        _table(
            ["worker", "observed", "RSS first → last", "trend", "descriptors (min-max)", "grows"],
            [
                [
                    f"{g['instance']} pid {g['pid']}",
                    f"{(g['from_s'] - start) / 60:.1f}-{(g['from_s'] + g['span_s'] - start) / 60:.1f} min",
                    f"{g['rss_first_mb']:.1f} → {g['rss_last_mb']:.1f} MB",
                    f"{g['rss_trend_mb']:+.1f} MB",
                    f"{g['fds_range'][0]}-{g['fds_range'][1]}",
                    "**yes**" if g["grows"] else "no",
                ]
                for g in growth
            ],
        )
        if growth
        else "(no worker lived long enough after the warm-up to judge)"
    )
    streams = ", ".join(f"{name} {value:g}" for name, value in idle["streams_in_flight"].items() if value is not None)
    out.append(
        f"\nAfter the load ({'back to idle' if idle['ok'] else '**NOT back to idle**'}): streams in flight "
        f"{streams}; per worker: client connections (greenlets) {[w['clients'] for w in idle['workers']]}, "
        f"descriptors {[w['fds'] for w in idle['workers']]}, of which pooled connections to vendors "
        f"{[w['vendors'] for w in idle['workers']]} and to Redis {[w['redis'] for w in idle['workers']]}, dead "
        f"sockets still held by a pool {[w['dead'] for w in idle['workers']]} (closed by the peer, e.g. Redis "
        "restarted; released when the pool hands them out again); "
        "descriptors an idle worker did not have before the load: "
        f"{[w['problems'] for w in idle['workers']] if any(w['problems'] for w in idle['workers']) else 'none'}."
    )

    # Unavoidable by mode; avoidable in full.
    unavoidable = Counter()
    for row, cls in zip(rows, classes, strict=True):
        if cls == "unavoidable":
            modes = timeline.modes_between(row["t0"], row["t_end"]) & BREAKS_STREAMS
            unavoidable[f"{row['outcome']} while {FLAKY} was {'/'.join(sorted(modes))}"] += 1
    if unavoidable:
        out.append("\nUnavoidable errors (streams committed to the flapping vendor, which then broke them):\n")
        out.append(_table(["what", "count"], [[k, v] for k, v in unavoidable.most_common()]))
    avoidable = [row for row, cls in zip(rows, classes, strict=True) if cls == "avoidable"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in avoidable:
        detail = _shape(str(row["detail"]))
        groups[f"{row['persona']}: {row['outcome']} {row['status'] or ''} {detail}"].append(row)
    if avoidable:
        out.append("\nAvoidable errors, grouped (first example: when, router access line, nginx line):\n")
        lines = []
        for key, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            row = group[0]
            router = logs["access"].get(row["id"])
            nginx = logs["nginx_access"].get(row["id"])
            near = [
                f"{e['kind']}@{e['start'] - start:.0f}s"
                for e in timeline.events
                if e["start"] - 15 <= row["t0"] <= e["end"] + 15
            ]
            lines.append(
                [
                    key,
                    len(group),
                    f"{row['t0'] - start:.1f} s",
                    ", ".join(near) or "-",
                    f"{router['instance']}: {router.get('message')}" if router else "none",
                    f"{nginx.get('status')} upstream {nginx.get('upstream')} {nginx.get('upstream_time')}"
                    if nginx
                    else "none",
                ]
            )
        out.append(_table(["what", "count", "first at", "events near", "router", "nginx"], lines))

    # Logs.
    missing = Counter(row["outcome"] for row in rows if row["id"] not in logs["access"])
    mismatched = [
        row["id"]
        for row in rows
        if row["id"] in logs["access"]
        and row["status"] is not None
        and logs["access"][row["id"]].get("status") != row["status"]
    ]
    api_lines = sum(str(entry.get("path")).startswith("/v1") for entry in logs["access"].values())
    out.append(
        f"\nAccess lines: the routers logged {api_lines} for /v1; client requests without one: "
        f"{sum(missing.values())} {dict(missing) if missing else ''}; with another status than the client saw: "
        f"{len(mismatched)} {mismatched[:5] if mismatched else ''}"
    )
    out.append(f"\nTracebacks in the router logs: {len(logs['tracebacks'])}")
    for text in logs["tracebacks"][:5]:
        out.append("```\n" + text[:1500] + "\n```")
    out.append(f"\nRouter log lines by level: {json.dumps(logs['levels'], sort_keys=True)}")
    if logs["problems"]:
        out.append("\nRouter warnings and errors, by kind:\n")
        out.append(_table(["line", "count"], [[k.replace("|", "/"), v] for k, v in logs["problems"].most_common(25)]))
    if logs["nginx_errors"]:
        out.append("\nnginx error log, by kind:\n")
        kinds = logs["nginx_errors"].most_common(15)
        out.append(_table(["line", "count"], [[k.replace("|", "/"), v] for k, v in kinds]))
    out.append("\nOperator events:\n")
    out.append(
        _table(
            ["at", "event", "what was done"],
            [[f"{e['start'] - start:.0f} s", e["kind"], e["detail"]] for e in timeline.events],
        )
    )
    if leftovers:
        out.append(f"\n**Processes left behind: {leftovers}**")

    done = totals["avoidable"] == 0 and not grown and not logs["tracebacks"] and idle["ok"] and not leftovers
    verdict = (
        f"**{'DONE' if done else 'NOT DONE'}**: {len(rows)} requests, {totals['avoidable']} avoidable errors, "
        f"{totals['unavoidable']} unavoidable, {len(grown)} workers growing, {len(logs['tracebacks'])} tracebacks, "
        f"in-flight {'back to 0' if idle['ok'] else 'NOT back to 0'}."
    )
    text = f"Command: `{command}`\n\n{verdict}\n\n" + "\n".join(out) + "\n"
    summary = {
        "done": done,
        "totals": dict(totals),
        "requests": len(rows),
        "growth": growth,
        "idle": idle,
        "tracebacks": logs["tracebacks"],
        "avoidable": avoidable,
        "events": timeline.events,
    }
    return text, summary
