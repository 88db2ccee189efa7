"""The benchmark's printed table, the issue's goals checked against a result, and soak growth."""

from __future__ import annotations

from typing import Any

__all__ = ["goals", "grid", "growth", "nonstream_line", "soak_table", "stream_line", "table"]

# The reference points, measured on this kind of machine with wrk -t1.
PEERS = (
    "peers (issue 6, same method): LiteLLM proxy ~60/s at c=1, ~130/s at c=16, +16 ms; "
    "Portkey (Node) ~700/s at c=1, ~790/s at c=16, +1.1 ms; plain Flask+gevent+requests ~800/s at c=16, +2 ms"
)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _errors(errors: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in errors.items()) if errors else "0"


def _cpu(observed: dict[str, Any]) -> str:
    """Router CPU in cores, and each worker's share: 1.82 (0.88/0.94)."""
    workers = "/".join(f"{w:.2f}" for w in observed["worker_cpu_share"])
    return f"{observed['router_cpu_share']:.2f} ({workers})"


def nonstream_line(row: dict[str, Any]) -> str:
    lat, obs = row["latency_ms"], row["observed"]
    return (
        f"  {row['rps']:9.1f} calls/s  p50 {_f(lat['p50'])} ms  p99 {_f(lat['p99'])} ms  "
        f"errors {_errors(row['errors'])}  router CPU {_cpu(obs)}  vendor CPU {obs['vendor_cpu_share']:.2f}"
    )


def stream_line(row: dict[str, Any]) -> str:
    ttfc = row["ttfc_ms"]
    return (
        f"  ok {row['ok']}/{row['streams']}  served/open {row['peak_served']}/{row['peak_open']}  "
        f"TTFC p50 {_f(ttfc['p50'])} ms p99 {_f(ttfc['p99'])} ms  incremental {row['incremental']}  "
        f"stalls {row['stalls']}  "
        f"client CPU {row['client_cpu_share']:.2f}  router CPU {_cpu(row['observed'])}  "
        f"vendor CPU {row['observed']['vendor_cpu_share']:.2f}"
    )


def grid(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _by(rows: list[dict[str, Any]], key: str, value: Any, target: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get(key) == value and r["target"] == target), None)


def added_latency(result: dict[str, Any], concurrency: int = 1) -> dict[str, float | None]:
    """Router minus direct, p50 and p99, at one concurrency (ms)."""
    direct = _by(result["nonstream"], "concurrency", concurrency, "direct")
    routed = _by(result["nonstream"], "concurrency", concurrency, "router")
    if not direct or not routed:
        return {"p50": None, "p99": None}
    return {
        p: round(routed["latency_ms"][p] - direct["latency_ms"][p], 3)
        if routed["latency_ms"][p] is not None and direct["latency_ms"][p] is not None
        else None
        for p in ("p50", "p99")
    }


def added_ttfc(result: dict[str, Any], streams: int) -> dict[str, float | None]:
    """Router minus direct time to first chunk, p50 and p99, for K streams (ms)."""
    direct = _by(result["streams"], "concurrency", streams, "direct")
    routed = _by(result["streams"], "concurrency", streams, "router")
    if not direct or not routed:
        return {"p50": None, "p99": None}
    out: dict[str, float | None] = {}
    for p in ("p50", "p99"):
        a, b = routed["ttfc_ms"][p], direct["ttfc_ms"][p]
        out[p] = round(a - b, 3) if a is not None and b is not None else None
    return out


def table(result: dict[str, Any]) -> str:
    """The whole report, as printed at the end of ``make bench``."""
    meta = result["meta"]
    machine, router = meta["machine"], meta["router"]
    dirty = " (app/ modified)" if meta["app_dirty"] else ""
    vendor = "tests/bench/vendor.py" if router["vendor_server"] == "lean" else "tests/fake_vendor.py"
    parts = [
        "",
        f"Router benchmark  {meta['started']}  commit {meta['commit']}{dirty}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}; load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"router: {router['command']}, {router['workers']} gevent workers, worker_connections "
        f"{router['worker_connections']}, LOG_LEVEL={router['log_level']}, vendor: {vendor}",
        f"load: {meta['loadgen']}; {meta['duration_s']:g} s per measurement after {meta['warmup_s']:g} s warm-up",
    ]
    rows = []
    for row in result["nonstream"]:
        lat, obs = row["latency_ms"], row["observed"]
        rows.append(
            [
                str(row["concurrency"]),
                row["target"],
                f"{row['rps']:.0f}",
                _f(lat["p50"]),
                _f(lat["p99"]),
                _errors(row["errors"]),
                _f(row.get("router_cpu_ms_per_call"), 3) if row["target"] == "router" else "",
                _cpu(obs) if row["target"] == "router" else "",
                f"{obs['vendor_cpu_share']:.2f}",
                _f(row.get("loadgen_cpu_share")),
                obs["loadavg"].split()[0],
            ]
        )
    if rows:
        parts += ["", "Non-stream POST /v1/chat/completions (closed loop, keep-alive)"]
        headers = ["conc", "path", "calls/s", "p50 ms", "p99 ms", "errors", "CPU ms/call", "router CPU"]
        headers += ["vendor CPU", "loadgen CPU", "load1"]
        parts.append(grid(headers, rows))
        added = added_latency(result, 1)
        parts.append(
            f"added latency at c=1 (router - direct): p50 {_f(added['p50'], 3)} ms, p99 {_f(added['p99'], 3)} ms"
        )
        parts.append(
            "CPU columns: cores busy (1.00 = one core), the router's as total (per worker); "
            "CPU ms/call = router CPU time / calls"
        )
        parts.append(PEERS)

    stream_meta = meta["stream"]
    rows = []
    for row in result["streams"]:
        ttfc, obs = row["ttfc_ms"], row["observed"]
        rows.append(
            [
                str(row["concurrency"]),
                row["target"],
                f"{row['ok']}/{row['streams']}",
                f"{row['peak_served']}/{row['peak_open']}",
                _f(ttfc["p50"], 1),
                _f(ttfc["p99"], 1),
                f"{row['incremental']} ({row['incremental_share'] * 100:.0f}%)",
                f"{row['stalls']}/{row['streams_with_stalls']}",
                _f(row["max_gap_ms"], 0),
                _errors(row["problems"]),
                _f(row.get("router_cpu_ms_per_stream"), 2) if row["target"] == "router" else "",
                _cpu(obs) if row["target"] == "router" else "",
                f"{obs['vendor_cpu_share']:.2f}",
                f"{row['client_cpu_share']:.2f}",
                "/".join(map(str, obs.get("worker_fds_peak", []))) if row["target"] == "router" else "",
                obs["loadavg"].split()[0],
            ]
        )
    if rows:
        parts += [
            "",
            f"Streams: K at once, each {stream_meta['pieces']} chunks {stream_meta['interval_s'] * 1000:g} ms apart"
            + (
                f", requests spread over {stream_meta['ramp_s']:g} s" if stream_meta["ramp_s"] else ", all sent at once"
            ),
        ]
        headers = ["K", "path", "ok", "served/open", "TTFC p50", "TTFC p99", "incremental", "stalls/streams"]
        headers += ["max gap ms", "errors", "CPU ms/stream", "router CPU", "vendor CPU", "client CPU", "worker fds"]
        headers += ["load1"]
        parts.append(grid(headers, rows))
        for k in sorted({row["concurrency"] for row in result["streams"]}):
            added = added_ttfc(result, k)
            parts.append(
                f"added TTFC K={k} (router - direct): p50 {_f(added['p50'], 1)} ms, p99 {_f(added['p99'], 1)} ms"
            )
        parts.append(
            f"incremental: >= {stream_meta['incremental_share'] * 100:.0f}% of a stream's gaps between events are "
            f">= {stream_meta['interval_s'] * 250:g} ms (a quarter of the vendor's interval); stall: a gap > "
            f"{stream_meta['stall_s'] * 1000:g} ms; served/open: most streams relayed at once (first event to end) / "
            "open at the client; worker fds: peak descriptors per worker (~2 per stream)"
        )

    memory = result["memory"]
    parts += [
        "",
        f"router memory (master + workers, {memory['processes']} processes): RSS {memory['idle_rss_mb']} MB idle "
        f"({memory['started_rss_mb']} MB before the first call), "
        f"{memory['under_load_peak_rss_mb']} MB peak under load, "
        f"{memory['after_load_rss_mb']} MB after load; PSS {memory['idle_pss_mb']} / {memory['under_load_peak_pss_mb']}"
        f" / {memory['after_load_pss_mb']} MB",
    ]
    log = result["router_log"]
    parts.append(
        f"router log: {log['warning']} warnings, {log['error']} errors, {log['worker_timeout']} worker timeouts, "
        f"{log['pool_full']} pool-full warnings; workers replaced: {meta['workers_replaced']}"
    )
    parts += [
        "",
        "Goals (issue 6)",
        grid(
            ["goal", "target", "measured", "met"],
            [
                [g["goal"], g["target"], g["measured"], {True: "yes", False: "NO", None: "-"}[g["met"]]]
                for g in result["goals"]
            ],
        ),
    ]
    return "\n".join(parts)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 6 with the measured value and whether it is met (None: not measured)."""
    out: list[dict[str, Any]] = []

    def goal(name: str, target: str, measured: str, met: bool | None) -> None:
        out.append({"goal": name, "target": target, "measured": measured, "met": met})

    added = added_latency(result, 1)
    goal(
        "added latency p50, c=1",
        "<= 1.0 ms",
        f"{_f(added['p50'], 3)} ms",
        None if added["p50"] is None else added["p50"] <= 1.0,
    )
    for c, extra in ((16, False), (64, True)):
        row = _by(result["nonstream"], "concurrency", c, "router")
        if row is None:
            goal(f"calls/s, c={c}", ">= 2000", "-", None)
            continue
        goal(f"calls/s, c={c}", ">= 2000", f"{row['rps']:.0f}", row["rps"] >= 2000)
        if extra:
            p99 = row["latency_ms"]["p99"]
            goal(f"p99, c={c}", "<= 100 ms", f"{_f(p99)} ms", p99 is not None and p99 <= 100)
            errors = sum(row["errors"].values())
            goal(f"errors, c={c}", "0", str(errors), errors == 0)
    row = _by(result["streams"], "concurrency", 1000, "router")
    if row is None:
        goal("1,000 streams incremental", "all", "-", None)
    else:
        goal(
            "1,000 streams incremental",
            "all",
            f"{row['incremental']}/{row['streams']}",
            row["incremental"] == row["streams"],
        )
        goal("1,000 streams stalls", "0", str(row["stalls"]), row["stalls"] == 0)
        added_t = added_ttfc(result, 1000)
        goal(
            "1,000 streams added TTFC p99",
            "<= 50 ms",
            f"{_f(added_t['p99'], 1)} ms",
            None if added_t["p99"] is None else added_t["p99"] <= 50,
        )
    memory = result["memory"]
    goal("RSS at rest", "<= 150 MB", f"{memory['idle_rss_mb']} MB", memory["idle_rss_mb"] <= 150)
    back = memory["after_load_rss_mb"] - memory["idle_rss_mb"]
    # "Close to it": within 20 % of the idle figure.
    goal(
        "RSS after load",
        "close to idle (+20%)",
        f"{memory['after_load_rss_mb']} MB ({back:+.1f})",
        back <= 0.2 * memory["idle_rss_mb"],
    )
    goal("no growth over a 10-minute soak", "flat", "run `make soak`", None)
    return out


def _slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if not var:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 60


def growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS growth over a soak: after warm-up (the first 20% or 60 s) to the end, and its trend."""
    if not samples:
        return {}
    end_t = samples[-1]["t_s"]
    warm = min(60.0, end_t * 0.2)
    steady = [s for s in samples if s["t_s"] >= warm] or samples
    second_half = [s for s in samples if s["t_s"] >= end_t / 2] or samples
    slope_all = _slope_per_minute([(s["t_s"], s["rss_mb"]) for s in steady])
    slope_late = _slope_per_minute([(s["t_s"], s["rss_mb"]) for s in second_half])
    return {
        "warmup_s": round(warm, 1),
        "rss_after_warmup_mb": steady[0]["rss_mb"],
        "rss_end_mb": samples[-1]["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "growth_mb": round(samples[-1]["rss_mb"] - steady[0]["rss_mb"], 1),
        "slope_mb_per_min": None if slope_all is None else round(slope_all, 3),
        "slope_second_half_mb_per_min": None if slope_late is None else round(slope_late, 3),
        # Flat: the second half's trend is under 0.5 MB/min (5 MB over ten minutes).
        # No growth: the second half's trend is under 0.5 MB/min (5 MB over ten minutes).
        "flat": None if slope_late is None else slope_late < 0.5,
    }


def soak_table(result: dict[str, Any]) -> str:
    """The soak's report."""
    meta, g, whole, streams = result["meta"], result["growth"], result["nonstream"], result["streams"]
    lat = whole["latency_ms"]
    parts = [
        "",
        f"Router soak  {meta['started']}  commit {meta['commit']}  {result['soak_s']:g} s",
        f"machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}); load average "
        f"{meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"router: {meta['router']['workers']} workers, LOG_LEVEL={meta['router']['log_level']}; "
        f"load: {meta['loadgen']}",
        "",
        f"non-stream c={whole['concurrency']}: {whole['requests']} calls, {whole['rps']:.0f}/s, "
        f"p50 {_f(lat['p50'])} ms, p99 {_f(lat['p99'])} ms, errors {_errors(whole['errors'])}",
        f"streams (held {streams['concurrency']} at a time): {streams['streams']} streams, ok {streams['ok']}, "
        f"incremental {streams['incremental']}, stalls {streams['stalls']}, "
        f"TTFC p50 {_f(streams['ttfc_ms']['p50'], 1)} ms p99 {_f(streams['ttfc_ms']['p99'], 1)} ms, "
        f"errors {_errors(streams['problems'])}",
        "",
        "time s   RSS MB   PSS MB  load",
    ]
    step = max(len(result["samples"]) // 20, 1)
    for sample in result["samples"][::step]:
        parts.append(f"{sample['t_s']:6.0f}  {sample['rss_mb']:7.1f}  {sample['pss_mb']:7.1f}  {sample['loadavg']}")
    memory = result["memory"]
    flat = {True: "flat", False: "GROWING", None: "-"}[g.get("flat")]
    parts += [
        "",
        f"RSS: {memory['idle_rss_mb']} MB idle; {g.get('rss_after_warmup_mb')} MB after {g.get('warmup_s')} s warm-up, "
        f"{g.get('rss_end_mb')} MB at the end (growth {g.get('growth_mb')} MB, max {g.get('rss_max_mb')} MB); "
        f"{memory['after_load_rss_mb']} MB after load",
        f"trend: {_f(g.get('slope_mb_per_min'), 3)} MB/min after warm-up, "
        f"{_f(g.get('slope_second_half_mb_per_min'), 3)} MB/min over the second half -> {flat} "
        "(flat: second-half trend < 0.5 MB/min)",
        f"router log: {result['router_log']['warning']} warnings, {result['router_log']['error']} errors; "
        f"workers replaced: {meta['workers_replaced']}",
    ]
    return "\n".join(parts)
