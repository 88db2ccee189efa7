"""The failover benchmark's figures: from the client's rows and the vendor's call log to the report.

Times are seconds since the load started. Calls belong to the phase in which they were sent:
``before`` (from 1 s, after connections are up, to the fault), ``fault`` and ``after`` (from the
recovery to the end). Figures per run:

- client-visible errors per phase (a call not answered 200 in full, a stream with an error event
  or cut short), whole calls and streams apart; the goal is 0 for ``error`` and ``stall``, and for
  ``drop`` exactly the streams the failing vendor broke after the router had committed them (the
  bench vendor sends a content chunk before dropping, so each of its dropped streams is one);
- latency p50/p99 per phase (whole calls: to the end of the answer; streams: to the first
  event) and the fault's added latency (fault minus before);
- calls the failing vendor still received during the fault, and of those the ones that met the
  fault (all while erring or stalling; its streams while dropping): per cooldown period from the
  fault's start, and as bursts (calls less than half a cooldown apart), from its call log;
- recovery: when the failing vendor got its first call after recovering, and when it got its
  share back: the end of the first 0.5 s window after the recovery in which it received at least
  80% of its fair share of the calls (half, with two vendors of equal weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.bench.grid import grid
from tests.bench.stats import percentile

__all__ = ["DESCRIBE", "Timeline", "analyze", "run_summary_line", "table"]

DESCRIBE = {
    "error": "answers HTTP 500",
    "stall": "stalls without answering",
    "drop": "drops streams after the first content chunk",
}
SHARE_WINDOW = 0.5
SHARE_BACK = 0.8  # of the fair share


@dataclass(frozen=True)
class Timeline:
    """When the fault starts, when it ends, when the run ends (seconds from the load's start)."""

    fault_at: float
    recover_at: float
    end: float

    def as_dict(self) -> dict[str, float]:
        return {"fault_at_s": self.fault_at, "recover_at_s": self.recover_at, "end_s": self.end}

    def phases(self) -> dict[str, tuple[float, float]]:
        return {
            "before": (min(1.0, self.fault_at), self.fault_at),
            "fault": (self.fault_at, self.recover_at),
            "after": (self.recover_at, self.end),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _phase(rows: list[list[Any]], start: float, end: float) -> dict[str, Any]:
    """Figures of the calls sent in [start, end) (row times already relative)."""
    out: dict[str, Any] = {}
    for kind in ("whole", "stream"):
        mine = [r for r in rows if r[0] == kind and start <= r[1] < end]
        ok = [r for r in mine if r[5] is None]
        errors: dict[str, int] = {}
        for r in mine:
            if r[5] is not None:
                errors[r[5]] = errors.get(r[5], 0) + 1
        # Whole calls: time to the whole answer; streams: time to the first event.
        waits = sorted((r[2] - r[1]) if kind == "whole" else r[3] for r in ok if kind == "whole" or r[3] is not None)
        out[kind] = {
            "calls": len(mine),
            "per_s": round(len(mine) / (end - start), 1) if end > start else None,
            "errors": sum(errors.values()),
            "errors_by_kind": errors,
            "failed_over": sum(1 for r in ok if r[7] is not None and int(r[7]) > 1),
            "p50_ms": _ms(percentile(waits, 50)),
            "p99_ms": _ms(percentile(waits, 99)),
            "max_ms": _ms(waits[-1] if waits else None),
        }
    return out


def _bursts(times: list[float], gap: float) -> list[dict[str, float]]:
    bursts: list[dict[str, float]] = []
    for t in times:
        if bursts and t - bursts[-1]["last_s"] < gap:
            bursts[-1]["calls"] += 1
            bursts[-1]["last_s"] = round(t, 3)
        else:
            bursts.append({"at_s": round(t, 3), "last_s": round(t, 3), "calls": 1})
    return bursts


def analyze(
    mode: str,
    rows: list[list[Any]],
    calls: list[list[Any]],
    started: float,
    timeline: Timeline,
    failing: str,
    cooldown: float,
) -> dict[str, Any]:
    """The figures of one failover run (see the module docstring)."""
    rows = [[r[0], r[1] - started, r[2] - started, *r[3:]] for r in rows]
    calls = [[c[0] - started, *c[1:]] for c in calls]
    phases = {name: _phase(rows, a, b) for name, (a, b) in timeline.phases().items()}
    added = {
        kind: {
            p: round(phases["fault"][kind][p] - phases["before"][kind][p], 2)
            if phases["fault"][kind][p] is not None and phases["before"][kind][p] is not None
            else None
            for p in ("p50_ms", "p99_ms")
        }
        for kind in ("whole", "stream")
    }
    fault_calls = [c for c in calls if c[1] == failing and timeline.fault_at <= c[0] < timeline.recover_at]
    # The calls that met the fault: every call while erring or stalling; only streams while dropping.
    hit = [c for c in fault_calls if c[3] not in ("ok", "drop") or (c[3] == "drop" and c[2])]
    periods = []
    start = timeline.fault_at
    while start < timeline.recover_at - 1e-9:
        end = min(start + cooldown, timeline.recover_at)
        periods.append(sum(1 for c in hit if start <= c[0] < end))
        start = end
    # Streams the failing vendor broke after sending content: each is an error the client must see.
    committed_drops = sum(1 for c in hit if c[3] == "drop")
    whole_errors = sum(phases[p]["whole"]["errors"] for p in phases)
    stream_errors = sum(phases[p]["stream"]["errors"] for p in phases)
    goal_errors = committed_drops if mode == "drop" else 0
    return {
        "mode": mode,
        "describe": DESCRIBE[mode],
        "phases": phases,
        "added_during_fault_ms": added,
        "client_errors": whole_errors + stream_errors,
        "client_errors_goal": goal_errors,
        # Whole calls never fail; only streams the vendor broke after commit may.
        "goal_met": whole_errors == 0 and stream_errors == goal_errors,
        "failing_vendor": {
            "share_before_fault": _share(calls, failing, *timeline.phases()["before"]),
            "calls_during_fault": len(fault_calls),
            "faulty_calls": len(hit),
            "per_cooldown_period": periods,
            "cooldown_s": cooldown,
            "bursts": _bursts([c[0] for c in hit], cooldown / 2),
            "streams_broken_after_commit": committed_drops,
        },
        "recovery": _recovery(calls, failing, timeline),
    }


def _share(calls: list[list[Any]], vendor: str, start: float, end: float) -> float | None:
    window = [c for c in calls if start <= c[0] < end]
    return round(sum(1 for c in window if c[1] == vendor) / len(window), 3) if window else None


def _recovery(calls: list[list[Any]], failing: str, timeline: Timeline) -> dict[str, Any]:
    after = [c for c in calls if c[0] >= timeline.recover_at]
    first = next((c[0] for c in after if c[1] == failing), None)
    vendors = {c[1] for c in calls}
    fair = 1 / len(vendors) if vendors else 0.5
    shares: list[float | None] = []
    back = None
    start = timeline.recover_at
    while start + SHARE_WINDOW <= timeline.end + 1e-9:
        share = _share(after, failing, start, start + SHARE_WINDOW)
        shares.append(share)
        if back is None and share is not None and share >= SHARE_BACK * fair:
            back = round(start + SHARE_WINDOW - timeline.recover_at, 2)
        start += SHARE_WINDOW
    return {
        "first_call_after_s": None if first is None else round(first - timeline.recover_at, 3),
        "share_back_after_s": back,
        "fair_share": round(fair, 3),
        "share_per_window": shares,
        "window_s": SHARE_WINDOW,
    }


def _f(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def run_summary_line(run: dict[str, Any]) -> str:
    added = run["added_during_fault_ms"]
    recovery = run["recovery"]
    return (
        f"  client errors {run['client_errors']} (goal {run['client_errors_goal']}); added whole p50/p99 "
        f"{_f(added['whole']['p50_ms'], 2, True)}/{_f(added['whole']['p99_ms'], 1, True)} ms, stream TTFC "
        f"{_f(added['stream']['p50_ms'], 2, True)}/{_f(added['stream']['p99_ms'], 1, True)} ms; failing vendor: "
        f"{run['failing_vendor']['per_cooldown_period']} faulty calls per cooldown period; share back after "
        f"{_f(recovery['share_back_after_s'], 2)} s"
    )


def table(result: dict[str, Any]) -> str:
    """The failover report, as printed at the end of ``--failover``."""
    timeline, load, stream = result["timeline"], result["load"], result["stream"]
    env = " ".join(f"{k}={v}" for k, v in sorted(result["router_env"].items()))
    meta = result["meta"]
    parts = [
        "",
        f"Failover benchmark  {meta['started']}  commit {meta['commit']}"
        + (" (app/ modified)" if meta["app_dirty"] else ""),
        f"machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}); load average "
        f"{meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"two vendors (alpha, beta; equal weights; one bench vendor process) behind the router, "
        f"{result['workers']} gevent workers; set for these runs: {env} (everything else default: "
        "cooldowns per worker, no hedging, no first-token timeout)",
        f"load: {load['whole_clients']} clients of whole calls + {load['stream_clients']} of streams "
        f"({stream['pieces']} chunks {stream['interval_s'] * 1000:g} ms apart), closed loop, keep-alive; "
        f"beta fails from t={timeline['fault_at_s']:g} s to t={timeline['recover_at_s']:g} s, "
        f"the run ends at t={timeline['end_s']:g} s",
    ]
    headers = ["phase", "whole/s", "errors", "failed over", "p50 ms", "p99 ms", "max ms"]
    headers += ["streams/s", "errors", "failed over", "TTFC p50", "TTFC p99", "TTFC max"]
    for run in result["runs"]:
        parts += ["", f"beta {run['describe']}:"]
        rows = []
        for name, (a, b) in (
            Timeline(timeline["fault_at_s"], timeline["recover_at_s"], timeline["end_s"]).phases().items()
        ):
            w, s = run["phases"][name]["whole"], run["phases"][name]["stream"]
            rows.append(
                [f"{name} ({a:g}-{b:g} s)", _f(w["per_s"]), str(w["errors"]), str(w["failed_over"]),
                 _f(w["p50_ms"], 2), _f(w["p99_ms"], 1), _f(w["max_ms"], 0),
                 _f(s["per_s"]), str(s["errors"]), str(s["failed_over"]),
                 _f(s["p50_ms"], 1), _f(s["p99_ms"], 1), _f(s["max_ms"], 0)]
            )  # fmt: skip
        parts.append(grid(headers, rows))
        added = run["added_during_fault_ms"]
        parts.append(
            f"added latency during the fault (fault - before): whole p50 {_f(added['whole']['p50_ms'], 2, True)} ms, "
            f"p99 {_f(added['whole']['p99_ms'], 1, True)} ms; stream TTFC p50 {_f(added['stream']['p50_ms'], 2, True)}"
            f" ms, p99 {_f(added['stream']['p99_ms'], 1, True)} ms"
        )
        kinds = {}
        for phase in run["phases"].values():
            for kind in ("whole", "stream"):
                for problem, n in phase[kind]["errors_by_kind"].items():
                    kinds[f"{kind} {problem}"] = kinds.get(f"{kind} {problem}", 0) + n
        detail = ", ".join(f"{k}: {v}" for k, v in kinds.items()) or "none"
        met = "met" if run["goal_met"] else "NOT met"
        goal = (
            f"the {run['client_errors_goal']} streams beta broke after commit"
            if run["mode"] == "drop"
            else str(run["client_errors_goal"])
        )
        parts.append(f"client-visible errors: {run['client_errors']} ({detail}); goal: {goal}; {met}")
        failing = run["failing_vendor"]
        bursts = ", ".join(f"t={b['at_s']:.1f} s: {b['calls']}" for b in failing["bursts"]) or "none"
        parts.append(
            f"calls beta still received during the fault: {failing['calls_during_fault']}, of which "
            f"{failing['faulty_calls']} met the fault; those per {failing['cooldown_s']:g} s cooldown period: "
            f"{failing['per_cooldown_period']}; in bursts: {bursts}"
        )
        recovery = run["recovery"]
        shares = " ".join(_f(s, 2) for s in recovery["share_per_window"][:12])
        parts.append(
            f"after recovery: first call to beta after {_f(recovery['first_call_after_s'], 2)} s; its share back "
            f"(>= {SHARE_BACK * recovery['fair_share'] * 100:.0f}% of calls in a {recovery['window_s']:g} s window) "
            f"after {_f(recovery['share_back_after_s'], 2)} s; beta's share per window: {shares} "
            f"(before the fault: {_f(failing['share_before_fault'], 2)})"
        )
    return "\n".join(parts)
