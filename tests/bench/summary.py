"""A run's figures by name, the goals of the performance issue, and the median and range over runs.

``figures`` flattens one result into ``{name: number}``: per path (``direct``, ``router``, each
peer, ``responses``, ``messages``) the calls/s, latency and server CPU per concurrency, the stream
figures per K, the held streams, the stream cost, the router's memory; and Messages' router CPU per
call as a ratio to chat's (``messages:cpu_ratio_c1``). ``summarize`` takes several runs'
results and gives every figure as median, min and max; ``goals`` and ``goals_table`` lay the
issue's goals out as ``today -> goal -> measured median (range)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.bench.grid import grid

__all__ = [
    "GOALS",
    "Goal",
    "all_figures_table",
    "endpoints_table",
    "figures",
    "goals",
    "goals_table",
    "messages_verdict",
    "paths_table",
    "summarize",
]

# The router's endpoints translated onto chat: their rows' path -> their name among the figures.
TRANSLATED = {"/v1/responses": "responses", "/v1/messages": "messages"}


def _stream_figures(out: dict[str, float | None], prefix: str, row: dict[str, Any]) -> None:
    ttfc = row["ttfc_ms"]
    out[f"{prefix}:ok"] = row["ok"]
    out[f"{prefix}:incremental_pct"] = round(row["incremental_share"] * 100, 1) if row["streams"] else None
    out[f"{prefix}:stalls"] = row["stalls"]
    out[f"{prefix}:ttfc_p50"] = ttfc["p50"]
    out[f"{prefix}:ttfc_p99"] = ttfc["p99"]
    if row.get("router_cpu_ms_per_stream") is not None:
        out[f"{prefix}:cpu_ms_stream"] = row["router_cpu_ms_per_stream"]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def figures(result: dict[str, Any]) -> dict[str, float | None]:
    """Every number of one run, by name (``router:rps_c16``, ``router:k500:incremental_pct``, ...)."""
    out: dict[str, float | None] = {}
    translated = {name: result.get(name) or {} for name in TRANSLATED.values()}
    rows = [*result["nonstream"], *(row for section in translated.values() for row in section.get("nonstream", []))]
    for row in rows:
        name = TRANSLATED.get(row.get("path", ""), row["target"])
        c = row["concurrency"]
        out[f"{name}:rps_c{c}"] = row["rps"]
        out[f"{name}:p50_c{c}"] = row["latency_ms"]["p50"]
        out[f"{name}:p99_c{c}"] = row["latency_ms"]["p99"]
        for extra in ("p90", "max"):
            if row["latency_ms"].get(extra) is not None:
                out[f"{name}:{extra}_c{c}"] = row["latency_ms"][extra]
        if (row.get("little") or {}).get("ratio") is not None:
            out[f"{name}:little_c{c}"] = row["little"]["ratio"]
        out[f"{name}:errors_c{c}"] = sum(row["errors"].values())
        if row.get("router_cpu_ms_per_call") is not None:
            out[f"{name}:cpu_ms_call_c{c}"] = row["router_cpu_ms_per_call"]
    for key in list(out):
        name, _, what = key.partition(":")
        if name != "direct" and what.startswith(("p50_c", "p99_c")):
            out[f"{name}:added_{what}"] = _minus(out[key], out.get(f"direct:{what}"))
    for section, tag in ((result["streams"], "k"), (result.get("held_streams", []), "held")):
        for row in section:
            _stream_figures(out, f"{row['target']}:{tag}{row['concurrency']}", row)
    for name, section in translated.items():
        for row in section.get("streams", []):
            _stream_figures(out, f"{name}:k{row['concurrency']}", row)
    for key in list(out):
        name, _, what = key.partition(":")
        if name != "direct" and what.endswith((":ttfc_p50", ":ttfc_p99")):
            stream, _, p = what.partition(":")
            out[f"{name}:{stream}:added_{p}"] = _minus(out[key], out.get(f"direct:{what}"))
    for key in list(out):
        name, _, what = key.partition(":")
        if name in TRANSLATED.values() and what.startswith("cpu_ms_call_c"):
            # Router CPU per call over chat's through the router at the same concurrency.
            out[f"{name}:cpu_ratio_{what.removeprefix('cpu_ms_call_')}"] = _ratio(out[key], out.get(f"router:{what}"))
    cost = result.get("stream_cost")
    if cost:
        out["router:stream_start_ms"] = cost["start_ms"]
        out["router:stream_event_us"] = cost["per_event_us"]
        if cost.get("start_over_whole_call") is not None:
            out["router:stream_start_over_call"] = cost["start_over_whole_call"]
            out["router:cpu_ms_call_new_connection"] = cost["whole_call"]["new_connection_cpu_ms_per_call"]
    memory = result["memory"]
    out["router:rss_idle_mb"] = memory["idle_rss_mb"]
    out["router:rss_peak_mb"] = memory["under_load_peak_rss_mb"]
    out["router:rss_after_mb"] = memory["after_load_rss_mb"]
    return out


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each figure over the runs: median, min, max and the values (runs that lack it are left out)."""
    per_run = [figures(result) for result in results]
    names = list(dict.fromkeys(name for run in per_run for name in run))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [run[name] for run in per_run if run.get(name) is not None]
        if values:
            out[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "values": values,
            }
    return out


@dataclass(frozen=True)
class Goal:
    """One row of the issue's goals table."""

    label: str
    figure: str
    today: str
    goal: str
    met: Callable[[float], bool] | None
    unit: str
    digits: int


GOALS = (
    Goal("router CPU per whole call, LOG_LEVEL=info (c=1)", "router:cpu_ms_call_c1", "1.15 ms", "≤ 0.70 ms",
         lambda v: v <= 0.70, " ms", 3),
    Goal("calls/s at concurrency 16", "router:rps_c16", "1,488", "≥ 2,400", lambda v: v >= 2400, "", 0),
    Goal("added latency p50 at concurrency 1", "router:added_p50_c1", "1.03 ms", "≤ 0.60 ms",
         lambda v: v <= 0.60, " ms", 3),
    Goal("router CPU to start a stream", "router:stream_start_ms", "~1.9 ms", "≤ 1.0 ms", lambda v: v <= 1.0,
         " ms", 2),
    Goal("a stream's start ÷ a whole call's CPU (ab, a new connection each)", "router:stream_start_over_call",
         "~2x (against kept-alive calls)", "≤ 1.1x", lambda v: v <= 1.1, "x", 2),
    Goal("router CPU per relayed stream event", "router:stream_event_us", "~75 µs", "≤ 30 µs", lambda v: v <= 30,
         " µs", 1),
    Goal("500 streams at once, 20 chunks 20 ms apart: incremental", "router:k500:incremental_pct", "65%", "100%",
         lambda v: v >= 100, "%", 1),
    Goal("500 streams at once: stalls", "router:k500:stalls", "100", "0", lambda v: v == 0, "", 0),
    Goal("500 streams at once: added TTFC p99", "router:k500:added_ttfc_p99", "+812 ms", "≤ 50 ms",
         lambda v: v <= 50, " ms", 1),
    Goal("1,000 streams held, 20 chunks 100 ms apart: incremental", "router:held1000:incremental_pct",
         "not measured", "100%", lambda v: v >= 100, "%", 1),
    Goal("1,000 streams held: stalls", "router:held1000:stalls", "not measured", "0", lambda v: v == 0, "", 0),
    Goal("RSS at rest (master + workers)", "router:rss_idle_mb", "136 MB", "≤ 120 MB", lambda v: v <= 120, " MB", 1),
)  # fmt: skip

# POST /v1/responses beside chat: no goal, chat's own figure in the goal column.
RESPONSES = (
    ("POST /v1/responses whole: calls/s at concurrency 16", "responses:rps_c16", "router:rps_c16", "", 0),
    ("POST /v1/responses whole: added latency p50 at c=1", "responses:added_p50_c1", "router:added_p50_c1", " ms", 3),
    ("POST /v1/responses streamed, 500 at once: incremental", "responses:k500:incremental_pct",
     "router:k500:incremental_pct", "%", 1),
    ("POST /v1/responses streamed, 500 at once: added TTFC p99", "responses:k500:added_ttfc_p99",
     "router:k500:added_ttfc_p99", " ms", 1),
)  # fmt: skip


# POST /v1/messages beside chat: router CPU per call at most 1.15x chat's; streams stay incremental.
MESSAGES = (
    Goal("POST /v1/messages whole: router CPU per call ÷ chat's (c=1)", "messages:cpu_ratio_c1", "-", "≤ 1.15x",
         lambda v: v <= 1.15, "x", 2),
    Goal("POST /v1/messages whole: router CPU per call ÷ chat's (c=16)", "messages:cpu_ratio_c16", "-", "≤ 1.15x",
         lambda v: v <= 1.15, "x", 2),
    Goal("POST /v1/messages streamed, 50 at once: incremental", "messages:k50:incremental_pct", "-", "100%",
         lambda v: v >= 100, "%", 1),
    Goal("POST /v1/messages streamed, 500 at once: incremental", "messages:k500:incremental_pct", "-", "100%",
         lambda v: v >= 100, "%", 1),
)  # fmt: skip
# What each of those rows shows beside its figure: (Messages' own figure or None, chat's), unit, digits.
MESSAGES_CHAT = {
    "messages:cpu_ratio_c1": (("messages:cpu_ms_call_c1", "router:cpu_ms_call_c1"), " ms", 3),
    "messages:cpu_ratio_c16": (("messages:cpu_ms_call_c16", "router:cpu_ms_call_c16"), " ms", 3),
    "messages:k50:incremental_pct": ((None, "router:k50:incremental_pct"), "%", 1),
    "messages:k500:incremental_pct": ((None, "router:k500:incremental_pct"), "%", 1),
}
MESSAGES_BESIDE_CHAT = (
    ("POST /v1/messages whole: calls/s at concurrency 16", "messages:rps_c16", "router:rps_c16", "", 0),
    ("POST /v1/messages whole: added latency p50 at c=1", "messages:added_p50_c1", "router:added_p50_c1", " ms", 3),
    ("POST /v1/messages streamed, 500 at once: added TTFC p99", "messages:k500:added_ttfc_p99",
     "router:k500:added_ttfc_p99", " ms", 1),
)  # fmt: skip


def _measured(summary: dict[str, dict[str, Any]], figure: str, unit: str, digits: int) -> str:
    entry = summary.get(figure)
    if entry is None:
        return "-"
    median = f"{entry['median']:,.{digits}f}{unit}"
    if len(entry["values"]) == 1:
        return median
    return f"{median} ({entry['min']:,.{digits}f} to {entry['max']:,.{digits}f})"


def goals(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The goals table's rows: label, today, goal, measured median (range), met (None: not measured)."""
    rows = []
    for g in GOALS:
        entry = summary.get(g.figure)
        met = None if entry is None or g.met is None else g.met(entry["median"])
        rows.append(
            {
                "measure": g.label,
                "figure": g.figure,
                "today": g.today,
                "goal": g.goal,
                "measured": _measured(summary, g.figure, g.unit, g.digits),
                "met": met,
            }
        )
    for g in MESSAGES:
        entry = summary.get(g.figure)
        (own, chat), unit, digits = MESSAGES_CHAT[g.figure]
        measured = _measured(summary, g.figure, g.unit, g.digits)
        if own is not None and entry is not None:
            # The ratio, then the two CPU figures it divides.
            measured += f": {_measured(summary, own, unit, digits)} vs chat {_measured(summary, chat, unit, digits)}"
        rows.append(
            {
                "measure": g.label,
                "figure": g.figure,
                "today": g.today,
                "goal": g.goal if own is not None else f"{g.goal} (chat: {_measured(summary, chat, unit, digits)})",
                "measured": measured,
                "met": None if entry is None else g.met(entry["median"]),  # type: ignore[misc]
            }
        )
    rows += _tail_goals(summary)
    for label, figure, chat, unit, digits in (*RESPONSES, *MESSAGES_BESIDE_CHAT):
        rows.append(
            {
                "measure": label,
                "figure": figure,
                "today": "-",
                "goal": f"chat: {_measured(summary, chat, unit, digits)}",
                "measured": _measured(summary, figure, unit, digits),
                "met": None,
            }
        )
    return rows


# The tail against the Portkey gateway measured in the same run: (label, router's figure, Portkey's,
# how many times Portkey's the router must reach at least (p99: at most 1x), unit, digits, today).
TAIL = (
    ("p99 at concurrency 16", "router:p99_c16", "portkey:p99_c16", None, " ms", 1, "141-158 ms (Portkey 59)"),
    ("p99 at concurrency 64", "router:p99_c64", "portkey:p99_c64", None, " ms", 1, "1,123 ms (Portkey 134, wrk)"),
    ("p99 at concurrency 16 behind nginx", "nginx+router:p99_c16", "portkey:p99_c16", None, " ms", 1, "-"),
    ("p99 at concurrency 64 behind nginx", "nginx+router:p99_c64", "portkey:p99_c64", None, " ms", 1, "-"),
    ("calls/s at concurrency 16", "router:rps_c16", "portkey:rps_c16", 1.5, "", 0, "1,396 (Portkey 811)"),
    ("calls/s at concurrency 64", "router:rps_c64", "portkey:rps_c64", 1.5, "", 0, "1,388 (Portkey 777)"),
)


def _tail_goals(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The tail goals: the router's p99 no worse than Portkey's, its calls/s at least 1.5x Portkey's."""
    rows = []
    for label, figure, peer, times, unit, digits, today in TAIL:
        own, theirs = summary.get(figure), summary.get(peer)
        goal = "≤ Portkey's" if times is None else f"≥ {times:g}x Portkey's"
        met = None
        if own is not None and theirs is not None:
            met = own["median"] <= theirs["median"] if times is None else own["median"] >= times * theirs["median"]
        rows.append(
            {
                "measure": label,
                "figure": figure,
                "today": today,
                "goal": goal,
                "measured": f"{_measured(summary, figure, unit, digits)} vs "
                f"Portkey {_measured(summary, peer, unit, digits)}",
                "met": met,
            }
        )
    return rows


def goals_table(rows: list[dict[str, Any]], runs: int) -> str:
    title = "measured" if runs == 1 else f"measured: median of {runs} (range)"
    body = [
        [r["measure"], r["today"], r["goal"], r["measured"], {True: "yes", False: "NO", None: "-"}[r["met"]]]
        for r in rows
    ]
    return grid(["measure", "today", "goal", title, "met"], body)


def paths_table(summary: dict[str, dict[str, Any]], paths: list[str], ks: list[int]) -> str:
    """Router, peers and the direct path side by side (one run on one machine), medians and ranges."""
    headers = ["path", "calls/s c=1", "calls/s c=16", "calls/s c=64", "added p50 c=1", "CPU ms/call c=16"]
    headers += [f"K={k} incremental" for k in ks]
    rows = []
    for path in paths:
        row = [
            path,
            _measured(summary, f"{path}:rps_c1", "", 0),
            _measured(summary, f"{path}:rps_c16", "", 0),
            _measured(summary, f"{path}:rps_c64", "", 0),
            _measured(summary, f"{path}:added_p50_c1", " ms", 2) if path != "direct" else "",
            _measured(summary, f"{path}:cpu_ms_call_c16", "", 2) if path != "direct" else "",
        ]
        row += [_measured(summary, f"{path}:k{k}:incremental_pct", "%", 0) for k in ks]
        rows.append(row)
    return grid(headers, rows)


def endpoints_table(summary: dict[str, dict[str, Any]], ks: list[int]) -> str:
    """Chat, Responses and Messages through the router, side by side: calls/s, added latency, router
    CPU per call at c=1 and c=16 (and as a ratio to chat's), streams incremental and added TTFC p99."""
    headers = ["endpoint", "calls/s c=1", "calls/s c=16", "added p50 c=1"]
    headers += ["CPU ms/call c=1", "CPU ms/call c=16", "CPU ÷ chat c=1", "CPU ÷ chat c=16"]
    headers += [f"K={k} {what}" for k in ks for what in ("incremental", "added TTFC p99")]
    rows = []
    endpoints = [("router", "chat /v1/chat/completions")]
    endpoints += [(name, f"{name} {path}") for path, name in TRANSLATED.items()]
    for name, label in endpoints:
        row = [
            label,
            _measured(summary, f"{name}:rps_c1", "", 0),
            _measured(summary, f"{name}:rps_c16", "", 0),
            _measured(summary, f"{name}:added_p50_c1", " ms", 3),
            _measured(summary, f"{name}:cpu_ms_call_c1", "", 3),
            _measured(summary, f"{name}:cpu_ms_call_c16", "", 3),
            "1.00x" if name == "router" else _measured(summary, f"{name}:cpu_ratio_c1", "x", 2),
            "1.00x" if name == "router" else _measured(summary, f"{name}:cpu_ratio_c16", "x", 2),
        ]
        for k in ks:
            row += [
                _measured(summary, f"{name}:k{k}:incremental_pct", "%", 0),
                _measured(summary, f"{name}:k{k}:added_ttfc_p99", " ms", 1),
            ]
        if any(cell not in ("-", "1.00x") for cell in row[1:]):  # else skipped or not asked for
            rows.append(row)
    return grid(headers, rows)


def messages_verdict(summary: dict[str, dict[str, Any]]) -> str:
    """What the Messages rows say against their goals (medians): CPU per call at most 1.15x chat's at
    c=1 and c=16, and whether every stream stayed incremental."""

    def median(figure: str, digits: int) -> str:
        entry = summary.get(figure)
        return "-" if entry is None else f"{entry['median']:,.{digits}f}"

    ratios = []
    for c in (1, 16):
        entry = summary.get(f"messages:cpu_ratio_c{c}")
        if entry is None:
            ratios.append(f"c={c} not measured")
            continue
        ratios.append(
            f"c={c} {entry['median']:.2f}x ({median(f'messages:cpu_ms_call_c{c}', 3)} ms vs chat "
            f"{median(f'router:cpu_ms_call_c{c}', 3)} ms): {'met' if entry['median'] <= 1.15 else 'NOT met'}"
        )
    streams = []
    for key, entry in summary.items():
        name, _, rest = key.partition(":")
        if name == "messages" and rest.endswith(":incremental_pct"):
            k = rest.split(":")[0]
            verdict = "incremental" if entry["median"] >= 100 else "NOT all incremental"
            chat = median(f"router:{k}:incremental_pct", 0)
            streams.append(f"K={k[1:]} {entry['median']:.0f}% {verdict} (chat {chat}%)")
    return (
        "POST /v1/messages router CPU per call ÷ chat's (goal ≤ 1.15x): " + "; ".join(ratios) + "\n"
        "POST /v1/messages streams (text deltas counted): " + ("; ".join(streams) or "not measured")
    )


def all_figures_table(summary: dict[str, dict[str, Any]]) -> str:
    """Every figure, median, min and max over the runs."""
    rows = [
        [name, f"{e['median']:,.3f}".rstrip("0").rstrip("."), f"{e['min']:,.3f}".rstrip("0").rstrip("."),
         f"{e['max']:,.3f}".rstrip("0").rstrip(".")]
        for name, e in summary.items()
    ]  # fmt: skip
    return grid(["figure", "median", "min", "max"], rows)
