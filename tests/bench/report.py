"""The benchmark's printed table, the issue's goals checked against a result, and soak growth."""

from __future__ import annotations

from typing import Any

from tests.bench import summary
from tests.bench.grid import grid

__all__ = ["growth", "nonstream_line", "soak_table", "stream_line", "table"]


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _errors(errors: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in errors.items()) if errors else "0"


def _cpu(observed: dict[str, Any]) -> str:
    """Server CPU in cores, and each child process's share: 1.82 (0.88/0.94); a lone process: 0.70."""
    workers = "/".join(f"{w:.2f}" for w in observed["worker_cpu_share"])
    total = f"{observed['router_cpu_share']:.2f}"
    return f"{total} ({workers})" if workers else total


def _little(row: dict[str, Any]) -> str:
    """mean x calls/s over the concurrency (Little's law), ! when off by more than 10%."""
    check = row.get("little") or {}
    if check.get("ratio") is None:
        return "-"
    return f"{check['ratio']:.2f}{'' if check['ok'] else ' !'}"


def _spread(row: dict[str, Any]) -> str:
    """Connections held per server process halfway through, and calls per router worker: 8/8 | 5012/4990."""
    held = "/".join(str(n) for n in sorted((row.get("connections_by_pid") or {}).values(), reverse=True))
    calls = "/".join(str(n) for n in sorted((row.get("calls_by_worker") or {}).values(), reverse=True) if n)
    return f"{held or '-'}{f' | {calls}' if calls else ''}"


def nonstream_line(row: dict[str, Any]) -> str:
    lat, obs = row["latency_ms"], row["observed"]
    return (
        f"  {row['rps']:9.1f} calls/s  p50 {_f(lat['p50'])} p90 {_f(lat.get('p90'))} p99 {_f(lat['p99'])} "
        f"max {_f(lat.get('max'), 1)} ms  Little {_little(row)}  conns | calls {_spread(row)}  "
        f"errors {_errors(row['errors'])}  router CPU {_cpu(obs)}  vendor CPU {obs['vendor_cpu_share']:.2f}"
    )


def stream_line(row: dict[str, Any]) -> str:
    ttfc = row["ttfc_ms"]
    return (
        f"  ok {row['ok']}/{row['streams']}  served/open {row['peak_served']}/{row['peak_open']}  "
        f"TTFC p50 {_f(ttfc['p50'])} p90 {_f(ttfc.get('p90'))} p99 {_f(ttfc['p99'])} max {_f(ttfc.get('max'))} ms  "
        f"incremental {row['incremental']}  "
        f"stalls {row['stalls']}  "
        f"client CPU {row['client_cpu_share']:.2f}  router CPU {_cpu(row['observed'])}  "
        f"vendor CPU {row['observed']['vendor_cpu_share']:.2f}"
    )


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


def _nonstream_grid(rows_in: list[dict[str, Any]]) -> str:
    rows = []
    for row in rows_in:
        lat, obs = row["latency_ms"], row["observed"]
        served = row["target"] != "direct"  # the CPU columns are the server's: router or peer
        rows.append(
            [
                str(row["concurrency"]),
                row["target"],
                f"{row['rps']:.0f}",
                _f(lat["p50"]),
                _f(lat.get("p90")),
                _f(lat["p99"]),
                _f(lat.get("max"), 1),
                _little(row),
                _spread(row),
                _errors(row["errors"]),
                _f(row.get("router_cpu_ms_per_call"), 3) if served else "",
                _cpu(obs) if served else "",
                f"{obs['vendor_cpu_share']:.2f}",
                _f(row.get("loadgen_cpu_share")),
                obs["loadavg"].split()[0],
            ]
        )
    headers = ["conc", "path", "calls/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "Little", "conns | calls"]
    headers += ["errors", "CPU ms/call", "server CPU"]
    headers += ["vendor CPU", "loadgen CPU", "load1"]
    return grid(headers, rows)


def _stream_grid(rows_in: list[dict[str, Any]]) -> str:
    rows = []
    for row in rows_in:
        ttfc, obs = row["ttfc_ms"], row["observed"]
        served = row["target"] != "direct"
        rows.append(
            [
                str(row["concurrency"]),
                row["target"],
                f"{row['ok']}/{row['streams']}",
                f"{row['peak_served']}/{row['peak_open']}",
                _f(ttfc["p50"], 1),
                _f(ttfc.get("p90"), 1),
                _f(ttfc["p99"], 1),
                _f(ttfc.get("max"), 1),
                f"{row['incremental']} ({row['incremental_share'] * 100:.0f}%)",
                f"{row['stalls']}/{row['streams_with_stalls']}",
                _f(row["max_gap_ms"], 0),
                _errors(row["problems"]),
                _f(row.get("router_cpu_ms_per_stream"), 2) if served else "",
                _cpu(obs) if served else "",
                f"{obs['vendor_cpu_share']:.2f}",
                f"{row['client_cpu_share']:.2f}",
                "/".join(map(str, obs.get("worker_fds_peak", []))) if served else "",
                obs["loadavg"].split()[0],
            ]
        )
    headers = ["K", "path", "ok", "served/open", "TTFC p50", "TTFC p90", "TTFC p99", "TTFC max", "incremental"]
    headers += ["stalls/streams"]
    headers += ["max gap ms", "errors", "CPU ms/stream", "server CPU", "vendor CPU", "client CPU", "worker fds"]
    headers += ["load1"]
    return grid(headers, rows)


def _added_ttfc_lines(direct_rows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        if row["target"] == "direct":
            continue
        base = next(
            (d for d in direct_rows if d["target"] == "direct" and d["concurrency"] == row["concurrency"]), None
        )
        if base is None:
            continue
        added = {
            p: None
            if row["ttfc_ms"][p] is None or base["ttfc_ms"][p] is None
            else row["ttfc_ms"][p] - base["ttfc_ms"][p]
            for p in ("p50", "p99")
        }
        lines.append(
            f"added TTFC K={row['concurrency']} ({row['target']} {row.get('path', '')} - direct): "
            f"p50 {_f(added['p50'], 1)} ms, p99 {_f(added['p99'], 1)} ms"
        )
    return lines


def _translated(result: dict[str, Any], section: dict[str, Any], path: str, title: str, counted: str) -> list[str]:
    """The rows of an endpoint the router translates onto chat (Responses, Messages), beside chat's."""
    parts: list[str] = []
    if section.get("note") and section["note"] != "not asked for":
        parts += ["", f"POST {path}: {section['note']}"]
    if section.get("nonstream"):
        parts += [
            "",
            f"Non-stream POST {path} through the router (its vendor call: the chat completion above)",
            _nonstream_grid(section["nonstream"]),
        ]
        for row in section["nonstream"]:
            c = row["concurrency"]
            direct = _by(result["nonstream"], "concurrency", c, "direct")
            chat = _by(result["nonstream"], "concurrency", c, "router")
            line = f"c={c}:"
            p50, direct_p50 = row["latency_ms"]["p50"], direct and direct["latency_ms"]["p50"]
            if p50 is not None and direct_p50 is not None:
                line += f" added latency ({title} - direct chat) p50 {p50 - direct_p50:.3f} ms;"
            own, chat_cpu = row.get("router_cpu_ms_per_call"), chat and chat.get("router_cpu_ms_per_call")
            if own is not None and chat_cpu:
                line += f" router CPU per call {own:.3f} ms vs chat {chat_cpu:.3f} ms ({own / chat_cpu:.2f}x)"
            parts.append(line)
    if section.get("streams"):
        parts += [
            "",
            f"Streamed POST {path}: K at once; counted events are {counted}",
            _stream_grid(section["streams"]),
            *_added_ttfc_lines(result["streams"], section["streams"]),
        ]
    return parts


def table(result: dict[str, Any]) -> str:
    """The whole report of one run, as printed at the end of ``make bench``."""
    meta = result["meta"]
    machine, router = meta["machine"], meta["router"]
    dirty = " (app/ modified)" if meta["app_dirty"] else ""
    vendor = "tests/bench/vendor.py" if router["vendor_server"] == "lean" else "tests/support/fake_vendor.py"
    parts = [
        "",
        f"Router benchmark  {meta['started']}  commit {meta['commit']}{dirty}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}; load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end",
        f"router: {router['command']}, {router['workers']} gevent workers, worker_connections "
        f"{router['worker_connections']}, LOG_LEVEL={router['log_level']}, vendor: {vendor}",
        f"load: {meta['loadgen']}; {meta['duration_s']:g} s per measurement after {meta['warmup_s']:g} s warm-up",
    ]
    peers = result.get("peers") or {}
    for name, peer in (peers.get("running") or {}).items():
        parts.append(f"peer {name}: {peer['version']}, {peer['command']}; measured interleaved in this run")
    for name, why in (peers.get("skipped") or {}).items():
        parts.append(f"peer {name}: SKIPPED: {why.splitlines()[0] if why else ''}")
    if result["nonstream"]:
        parts += [
            "",
            "Non-stream POST /v1/chat/completions (closed loop, keep-alive)",
            _nonstream_grid(result["nonstream"]),
        ]
        added = added_latency(result, 1)
        parts.append(
            f"added latency at c=1 (router - direct): p50 {_f(added['p50'], 3)} ms, p99 {_f(added['p99'], 3)} ms"
        )
        parts.append(
            "CPU columns: cores busy (1.00 = one core); server CPU is the router's (or the peer's) as total "
            "(per process); CPU ms/call = server CPU time / calls"
        )
        parts.append(
            "Little: mean latency x calls/s / concurrency (Little's law; ! = off by more than 10%: the load "
            "generator's figures are not to be trusted); conns | calls: connections held by each server process "
            "halfway through | calls made by each router worker"
        )
        suspect = [
            f"c={r['concurrency']} {r['target']}"
            for r in result["nonstream"]
            if (r.get("little") or {}).get("ok") is False
        ]
        if suspect:
            parts.append("WARNING: Little's law broken (figures not trustworthy) in: " + ", ".join(suspect))

    stream_meta = meta["stream"]
    if result["streams"]:
        parts += [
            "",
            f"Streams: K at once, each {stream_meta['pieces']} chunks {stream_meta['interval_s'] * 1000:g} ms apart"
            + (
                f", requests spread over {stream_meta['ramp_s']:g} s" if stream_meta["ramp_s"] else ", all sent at once"
            ),
            _stream_grid(result["streams"]),
            *_added_ttfc_lines(result["streams"], result["streams"]),
            "the router's TTFC includes one vendor interval: it holds the vendor's role-only first chunk until the "
            "first content chunk (its commit point for failover); the direct path's first event is that role chunk",
            f"incremental: >= {stream_meta['incremental_share'] * 100:.0f}% of a stream's gaps between events are "
            f">= a quarter of the vendor's interval; stall: a gap > "
            f"{stream_meta['stall_s'] * 1000:g} ms; served/open: most streams relayed at once (first event to end) / "
            "open at the client; worker fds: peak descriptors per worker (~2 per stream)",
        ]
    held = result.get("held_streams") or []
    if held:
        parts += [
            "",
            f"Streams held: K at once, each {stream_meta['pieces']} chunks {held[0]['interval_s'] * 1000:g} ms apart",
            _stream_grid(held),
            *_added_ttfc_lines(held, held),
        ]
    for name, path, title, counted in (
        ("responses", "/v1/responses", "Responses", f"the {stream_meta['pieces']} text deltas"),
        ("messages", "/v1/messages", "Messages", f"the {stream_meta['pieces']} text_delta content_block_delta events"),
    ):
        parts += _translated(result, result.get(name) or {}, path, title, counted)
    cost = result.get("stream_cost")
    if cost:
        points = ", ".join(f"{p['events']} events: {p['cpu_ms_per_stream']:.3f} ms" for p in cost["points"])
        parts += [
            "",
            f"stream cost (router CPU per stream, bursts of {cost['streams']} spread over 0.5 s: {points}): "
            f"start {cost['start_ms']:.3f} ms, per relayed event {cost['per_event_us']:.1f} µs",
        ]
        whole = cost.get("whole_call") or {}
        if whole.get("new_connection_cpu_ms_per_call") is not None:
            parts.append(
                f"like with like (ab, c=4, a new connection per call): router CPU per whole call "
                f"{whole['new_connection_cpu_ms_per_call']:.3f} ms, per stream of one piece (all events at once) "
                f"{whole['stream_new_connection_cpu_ms_per_call']:.3f} ms: a stream's start is "
                f"{cost['start_over_whole_call']:.2f}x a whole call's (the fitted start above: "
                f"{cost['fitted_start_over_whole_call']:.2f}x); a whole call kept alive: "
                f"{whole['keepalive_cpu_ms_per_call']:.3f} ms"
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
    parts += ["", "Goals (this run)", summary.goals_table(result["goals"], 1)]
    return "\n".join(parts)


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
