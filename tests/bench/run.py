"""The benchmark run: start a vendor and the router, measure both paths, report, save JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from tests.bench import failstats, report
from tests.bench.failover import DEFAULT_ENV, FAULT_MODES, run_failover
from tests.bench.load import LoadGenerator, pick_generator
from tests.bench.procs import Sampler, cpu_between, cpu_seconds, loadavg, sample_tree
from tests.bench.servers import HOST, LeanVendor
from tests.bench.stats import INCREMENTAL_SHARE, STALL_SECONDS
from tests.harness import ROOT, FakeVendor, Router, router_config, wait_until

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
ROUTER_PATH = "/v1/chat/completions"
VENDOR, MODEL, KEY = "openai", "gpt-4o", "sk-bench-openai-0123456789abcdef"


def stream_pieces(count: int) -> list[str]:
    """The vendor's stream content: ``count`` pieces, as tests/bench/vendor.py ``--pieces`` makes them."""
    return [f"token{i:02d} " for i in range(count)]


@dataclass(frozen=True)
class Target:
    """One way to reach the vendor: directly, or through the router."""

    name: str
    port: int
    path: str


def request_body(stream: bool, interval: float, pieces: int) -> bytes:
    """A typical small chat request; the stream variant tells the vendor how to stream."""
    body: dict[str, Any] = {
        "model": "any-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello, how are you? Please answer in one sentence."},
        ],
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
        # Passed through by the router untouched; both vendors (lean and fake) read it.
        body["x_fake"] = {"content_chunks": stream_pieces(pieces), "interval": interval}
    return json.dumps(body).encode()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Benchmark the router against its vendor called directly (issue 6).",
    )
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="sustained mixed load; report RSS growth")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per non-stream measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded load before each")
    parser.add_argument("--concurrency", default="1,16,64", help="non-stream concurrencies")
    parser.add_argument("--streams", default="50,500,1000", help="concurrent stream counts")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between the vendor's stream events")
    parser.add_argument("--pieces", type=int, default=20, help="content chunks in each of the vendor's streams")
    parser.add_argument("--ramp", type=float, default=0.0, help="spread each stream burst over this many s")
    parser.add_argument(
        "--no-stream-warmup", action="store_true", help="skip the discarded burst before each stream measurement"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gunicorn workers (default: CPUs)")
    parser.add_argument("--worker-connections", type=int, help="WORKER_CONNECTIONS (default: the router's, 1000)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="the router's LOG_LEVEL; info (the production default) logs two lines per call",
    )
    parser.add_argument(
        "--vendor-server",
        default="lean",
        choices=("lean", "fake"),
        help="lean: tests/bench/vendor.py (default); fake: tests/fake_vendor.py (~50 µs CPU per stream event)",
    )
    parser.add_argument("--loadgen", default="auto", choices=("auto", "wrk", "gevent"))
    parser.add_argument(
        "--stream-client",
        default="epoll",
        choices=("epoll", "gevent"),
        help="the stream client's engine (tests/bench/streamclient.py); gevent costs ~2x the CPU per event",
    )
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, 1 s warm-up: a smoke run")
    parser.add_argument("--skip-nonstream", action="store_true")
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--soak-concurrency", type=int, default=16, help="soak: non-stream concurrency")
    parser.add_argument("--soak-streams", type=int, default=100, help="soak: streams held at all times")
    parser.add_argument("--sample-every", type=float, default=5.0, help="soak: seconds between RSS samples")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (router log, raw outputs)")
    parser.add_argument("--out", type=Path, help="JSON result path (default: tests/bench/results/<time>.json)")
    failover = parser.add_argument_group(
        "failover", "--failover: two vendors at constant load, one fails for a while (tests/bench/failover.py)"
    )
    failover.add_argument("--failover", action="store_true", help="run the failover benchmark instead")
    failover.add_argument(
        "--failover-modes", default=",".join(FAULT_MODES), help="fault modes, one run each (error,stall,drop)"
    )
    failover.add_argument("--fault-at", type=float, help="seconds into the load when the fault starts (10)")
    failover.add_argument("--recover-at", type=float, help="seconds into the load when the vendor recovers (40)")
    failover.add_argument("--failover-duration", type=float, help="seconds of load per run (50)")
    failover.add_argument("--failover-whole", type=int, default=12, help="clients sending whole calls")
    failover.add_argument("--failover-streams", type=int, default=4, help="clients reading streams")
    failover.add_argument(
        "--failover-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a router setting for the failover runs, over the defaults "
        + " ".join(f"{k}={v}" for k, v in DEFAULT_ENV.items())
        + " (e.g. HEDGE_AFTER_SECONDS=0.2); repeatable",
    )
    args = parser.parse_args(argv)
    # --quick shortens the failover timeline too, and its cooldown with it, unless given.
    timeline = (3.0, 11.0, 15.0) if args.quick else (10.0, 40.0, 50.0)
    args.fault_at = timeline[0] if args.fault_at is None else args.fault_at
    args.recover_at = timeline[1] if args.recover_at is None else args.recover_at
    args.failover_duration = timeline[2] if args.failover_duration is None else args.failover_duration
    if args.quick and not any(item.startswith("COOLDOWN_SECONDS=") for item in args.failover_env):
        args.failover_env.insert(0, "COOLDOWN_SECONDS=2")
    if not 0 < args.fault_at < args.recover_at < args.failover_duration:
        parser.error("want 0 < --fault-at < --recover-at < --failover-duration")
    args.failover_modes = [m for m in args.failover_modes.split(",") if m]
    if unknown := set(args.failover_modes) - set(FAULT_MODES):
        parser.error(f"unknown fault modes {sorted(unknown)}; choose from {FAULT_MODES}")
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.streams = [int(k) for k in args.streams.split(",") if k]
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or the soak, or the failover runs), print the table, write the JSON."""
    args = parse_args(argv)
    if not Path("/proc/self/stat").exists():
        sys.exit("the benchmark reads /proc for memory and CPU: it runs on Linux only")
    # Streams are sockets (two per stream in a router worker): children inherit this limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = 2 * max([*args.streams, args.soak_streams]) + 256
    if hard < needed:
        print(f"warning: open-files limit {hard} < {needed}; large stream counts will fail (raise ulimit -Hn)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    kind = "failover" if args.failover else "soak" if args.soak else "bench"
    try:
        if args.failover:
            result = failover(args, workdir)
        else:
            bench = Bench(args, workdir)
            try:
                result = bench.soak() if args.soak else bench.run()
            finally:
                bench.stop()
    except BaseException:
        print(f"work directory (router log, raw outputs) kept: {workdir}", file=sys.stderr)
        raise
    out = args.out or RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    (RESULTS / f"latest-{kind}.json").write_text(json.dumps(result, indent=2))
    print({"failover": failstats.table, "soak": report.soak_table, "bench": report.table}[kind](result))
    print(f"\nJSON: {out}")
    if args.keep:
        print(f"work directory (router log, raw outputs): {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def failover(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The failover runs (tests/bench/failover.py), with what ran where."""
    meta = machine_meta()
    bodies = (
        request_body(stream=False, interval=args.interval, pieces=args.pieces),
        request_body(stream=True, interval=args.interval, pieces=args.pieces),
    )
    result = run_failover(args, workdir, bodies, say)
    meta["loadavg_end"] = loadavg()
    return {"meta": meta, **result}


def machine_meta() -> dict[str, Any]:
    """When, on what machine, with which versions and at which commit a run was made."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "versions": {name: _version(name) for name in ("gunicorn", "gevent", "flask", "requests", "orjson")},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "app_dirty": bool(_git("--no-optional-locks", "status", "--porcelain", "--", "app", "gunicorn.conf.py")),
        "loadavg_start": loadavg(),
    }


class Bench:
    """The vendor and the router, started once, and every measurement taken against them."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.loadavg_start = loadavg()
        self.generator: LoadGenerator = pick_generator(args.loadgen, workdir)
        say(f"load generator: {self.generator.describe()}; load average {self.loadavg_start}")
        self.vendor: FakeVendor | LeanVendor = LeanVendor() if args.vendor_server == "lean" else FakeVendor()
        self.router: Router | None = None
        try:
            self._start_router(args, workdir)
        except BaseException:
            self.vendor.stop()
            raise
        # The router calls <OPENAI_BASE_URL>/chat/completions; the direct path is the same URL.
        self.direct = Target("direct", self.vendor.port, f"/{VENDOR}/chat/completions")
        self.via_router = Target("router", self.router_port, ROUTER_PATH)
        self.whole_body = request_body(stream=False, interval=args.interval, pieces=args.pieces)
        self.stream_body = request_body(stream=True, interval=args.interval, pieces=args.pieces)
        self.stream_body_file = workdir / "stream-body.json"
        self.stream_body_file.write_bytes(self.stream_body)

    def _start_router(self, args: argparse.Namespace, workdir: Path) -> None:
        env = router_config(
            workdir / "config",
            self.vendor,  # type: ignore[arg-type]  # router_config only calls .url()
            models=[{"vendor": VENDOR, "model": MODEL}],
            credentials=[{"platform": VENDOR, "type": "api-key", "value": KEY}],
        )
        env["LOG_LEVEL"] = args.log_level
        # A private metrics directory, removed with the work directory.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
        (workdir / "metrics").mkdir()
        if args.worker_connections:
            env["WORKER_CONNECTIONS"] = str(args.worker_connections)
        self.router = Router(env, workdir / "router.log", workers=args.workers)
        self.router_port = self.router.port
        self.log_offset = 0

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        self.vendor.stop()

    @property
    def router_pid(self) -> int:
        assert self.router is not None
        return self.router.process.pid

    # -- checks before measuring ------------------------------------------------------------------

    def check(self) -> int:
        """Both paths answer correctly, whole and streamed; returns the events a stream has.

        Also waits until every worker has booted, and marks the end of the start-up log lines
        (e.g. the open-router warning), so only what the load causes is counted.
        """
        wait_until(
            lambda: len(sample_tree(self.router_pid).cpu) > self.args.workers,
            timeout=30,
            message=f"{self.args.workers} router workers running",
        )
        self.rss_started = sample_tree(self.router_pid)
        self.workers_at_start = set(self.rss_started.cpu) - {self.router_pid}
        direct = _whole(self.url(self.direct), self.whole_body)
        routed = _whole(self.url(self.via_router), self.whole_body)
        if direct["choices"][0]["message"]["content"] != routed["choices"][0]["message"]["content"]:
            raise RuntimeError(f"the router's answer differs from the vendor's: {routed!r} vs {direct!r}")
        expected = "".join(stream_pieces(self.args.pieces))
        counts = []
        for target in (self.direct, self.via_router):
            events, content = _stream(self.url(target), self.stream_body)
            if content != expected:
                raise RuntimeError(f"{target.name} stream content {content!r}, expected {expected!r}")
            counts.append(events)
        if counts[0] != counts[1]:
            raise RuntimeError(f"direct stream has {counts[0]} events, the router's {counts[1]}")
        time.sleep(1)  # the last worker's start-up lines
        assert self.router is not None
        self.log_offset = self.router.log_path.stat().st_size
        return counts[0]

    def url(self, target: Target) -> str:
        return f"http://{HOST}:{target.port}{target.path}"

    # -- one measurement, observed --------------------------------------------------------------

    def observe(self, action: Callable[[], dict[str, Any]], fds: bool = False) -> dict[str, Any]:
        """Run ``action`` while sampling the router; add its CPU and memory, and the vendor's CPU, to the result."""
        with Sampler(self.router_pid, every=0.5, fds=fds) as sampler:
            before = sample_tree(self.router_pid)
            vendor_before = cpu_seconds(self.vendor.process.pid)
            started = time.monotonic()
            result = action()
            wall = time.monotonic() - started
            vendor_cpu = cpu_seconds(self.vendor.process.pid) - vendor_before
            after = sample_tree(self.router_pid)
        router_cpu = cpu_between(before, after)
        result["observed"] = {
            "wall_s": round(wall, 3),
            "router_cpu_s": round(router_cpu, 3),
            "router_cpu_share": round(router_cpu / wall, 3),  # of one core; the machine has os.cpu_count()
            # Per worker: gevent workers accept greedily, so one may hold most connections.
            "worker_cpu_share": [
                round((after.cpu[pid] - before.cpu[pid]) / wall, 3)
                for pid in sorted(after.cpu)
                if pid in before.cpu and pid != self.router_pid
            ],
            "vendor_cpu_share": round(vendor_cpu / wall, 3),
            "router_rss_peak_mb": round(sampler.peak_rss_mb, 1),
            "router_pss_peak_mb": round(sampler.peak_pss_mb, 1),
            "workers_replaced": sorted(set(before.cpu) ^ set(after.cpu)),
            "loadavg": loadavg(),
        }
        if fds:
            peaks = sampler.peak_fds()
            result["observed"]["worker_fds_peak"] = [n for pid, n in sorted(peaks.items()) if pid != self.router_pid]
        return result

    def whole_load(self, target: Target, concurrency: int, duration: float) -> dict[str, Any]:
        return self.generator.run(HOST, target.port, target.path, self.whole_body, concurrency, duration)

    def stream_burst(self, target: Target, streams: int, expected: int) -> dict[str, Any]:
        out = self.workdir / f"streams-{target.name}-{streams}.json"
        command = [
            sys.executable,
            "-m",
            "tests.bench.streamclient",
            f"--host={HOST}",
            f"--port={target.port}",
            f"--path={target.path}",
            f"--body-file={self.stream_body_file}",
            f"--streams={streams}",
            f"--expected-events={expected}",
            f"--interval={self.args.interval}",
            f"--engine={self.args.stream_client}",
            f"--ramp={self.args.ramp}",
            f"--out={out}",
        ]
        subprocess.run(command, cwd=ROOT, check=True, timeout=600)
        return json.loads(out.read_text())

    # -- the benchmark ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        expected = self.check()
        time.sleep(1)
        idle = sample_tree(self.router_pid)
        say(f"checked both paths; router RSS {idle.rss_mb:.1f} MB idle ({self.rss_started.rss_mb:.1f} MB at start)")
        result: dict[str, Any] = {"meta": self.meta(), "nonstream": [], "streams": []}
        peak_rss = peak_pss = 0.0

        if not args.skip_nonstream:
            for concurrency in args.concurrency:
                for target in (self.direct, self.via_router):
                    if args.warmup:
                        self.whole_load(target, concurrency, args.warmup)
                    say(f"non-stream c={concurrency} {target.name} for {args.duration:g} s")
                    row = self.observe(lambda t=target, c=concurrency: self.whole_load(t, c, args.duration))
                    row.update(concurrency=concurrency, target=target.name)
                    if target is self.via_router and row["requests"]:
                        row["router_cpu_ms_per_call"] = round(
                            row["observed"]["router_cpu_s"] * 1000 / row["requests"], 3
                        )
                        peak_rss = max(peak_rss, row["observed"]["router_rss_peak_mb"])
                        peak_pss = max(peak_pss, row["observed"]["router_pss_peak_mb"])
                    result["nonstream"].append(row)
                    say(report.nonstream_line(row))

        if not args.skip_streams:
            for streams in args.streams:
                for target in (self.direct, self.via_router):
                    if not args.no_stream_warmup:
                        self.stream_burst(target, streams, expected)
                    say(f"streams K={streams} {target.name}")
                    row = self.observe(lambda t=target, k=streams: self.stream_burst(t, k, expected), fds=True)
                    row.update(target=target.name)
                    if target is self.via_router and row["streams"]:
                        row["router_cpu_ms_per_stream"] = round(
                            row["observed"]["router_cpu_s"] * 1000 / row["streams"], 3
                        )
                        peak_rss = max(peak_rss, row["observed"]["router_rss_peak_mb"])
                        peak_pss = max(peak_pss, row["observed"]["router_pss_peak_mb"])
                    result["streams"].append(row)
                    say(report.stream_line(row))

        say("letting the router settle for 5 s")
        time.sleep(5)
        after = sample_tree(self.router_pid)
        result["memory"] = {
            "started_rss_mb": round(self.rss_started.rss_mb, 1),
            "idle_rss_mb": round(idle.rss_mb, 1),
            "under_load_peak_rss_mb": round(peak_rss, 1),
            "after_load_rss_mb": round(after.rss_mb, 1),
            "idle_pss_mb": round(idle.pss_mb, 1),
            "under_load_peak_pss_mb": round(peak_pss, 1),
            "after_load_pss_mb": round(after.pss_mb, 1),
            "processes": len(after.rss_kb),
        }
        result["stream_events"] = expected
        self.finish_meta(result, after)
        result["goals"] = report.goals(result)
        return result

    # -- the soak ---------------------------------------------------------------------------------

    def soak(self) -> dict[str, Any]:
        args = self.args
        seconds = args.soak
        expected = self.check()
        time.sleep(1)
        idle = sample_tree(self.router_pid)
        say(
            f"soak: {seconds:g} s of non-stream load at c={args.soak_concurrency} beside "
            f"{args.soak_streams} streams held; RSS sampled every {args.sample_every:g} s"
        )
        load, token = self.generator.start(
            HOST, self.via_router.port, ROUTER_PATH, self.whole_body, args.soak_concurrency, seconds
        )
        streams_out = self.workdir / "soak-streams.json"
        streams = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.streamclient",
                f"--host={HOST}",
                f"--port={self.via_router.port}",
                f"--path={ROUTER_PATH}",
                f"--body-file={self.stream_body_file}",
                f"--streams={args.soak_streams}",
                f"--expected-events={expected}",
                f"--interval={args.interval}",
                f"--engine={args.stream_client}",
                f"--duration={seconds}",
                f"--out={streams_out}",
            ],
            cwd=ROOT,
        )
        started = time.monotonic()
        first = sample_tree(self.router_pid)
        samples: list[dict[str, Any]] = []
        last_print = 0.0
        while streams.poll() is None or load.poll() is None:
            time.sleep(args.sample_every)
            now = sample_tree(self.router_pid)
            elapsed = time.monotonic() - started
            samples.append(
                {
                    "t_s": round(elapsed, 1),
                    "rss_mb": round(now.rss_mb, 1),
                    "pss_mb": round(now.pss_mb, 1),
                    "processes": len(now.rss_kb),
                    "router_cpu_s": round(cpu_between(first, now), 2),
                    "loadavg": loadavg(),
                }
            )
            if elapsed - last_print >= min(60.0, max(seconds / 10, args.sample_every)):
                last_print = elapsed
                say(f"  {elapsed:6.0f} s  RSS {now.rss_mb:6.1f} MB  PSS {now.pss_mb:6.1f} MB  load {loadavg()}")
        whole = self.generator.finish(load, token)
        if streams.returncode != 0:
            raise RuntimeError(f"the stream client failed (exit {streams.returncode})")
        stream_summary = json.loads(streams_out.read_text())
        say("letting the router settle for 5 s")
        time.sleep(5)
        after = sample_tree(self.router_pid)
        result: dict[str, Any] = {
            "meta": self.meta(),
            "soak_s": seconds,
            "nonstream": {**whole, "concurrency": args.soak_concurrency},
            "streams": stream_summary,
            "samples": samples,
            "memory": {
                "idle_rss_mb": round(idle.rss_mb, 1),
                "after_load_rss_mb": round(after.rss_mb, 1),
                "idle_pss_mb": round(idle.pss_mb, 1),
                "after_load_pss_mb": round(after.pss_mb, 1),
            },
            "growth": report.growth(samples),
        }
        self.finish_meta(result, after)
        return result

    # -- what ran where ---------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        args = self.args
        return {
            **machine_meta(),
            "loadavg_start": self.loadavg_start,
            "router": {
                "workers": args.workers,
                "worker_connections": args.worker_connections or 1000,
                "log_level": args.log_level,
                "vendor_server": args.vendor_server,
                "command": "gunicorn -c gunicorn.conf.py wsgi:app",
            },
            "loadgen": self.generator.describe(),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "stream": {
                "client": f"tests/bench/streamclient.py --engine {args.stream_client}",
                "pieces": args.pieces,
                "interval_s": args.interval,
                "ramp_s": args.ramp,
                "stall_s": STALL_SECONDS,
                "incremental_share": INCREMENTAL_SHARE,
            },
        }

    def finish_meta(self, result: dict[str, Any], last: Any) -> None:
        result["meta"]["loadavg_end"] = loadavg()
        workers_now = set(last.cpu) - {self.router_pid}
        result["meta"]["workers_replaced"] = len(self.workers_at_start - workers_now)
        assert self.router is not None
        result["router_log"] = scan_log(self.router.log_path, self.log_offset)


_LEVEL = re.compile(r' (WARNING|ERROR|CRITICAL) |\[(WARNING|ERROR|CRITICAL)\]|"level": ?"(warning|error|critical)"')


def scan_log(path: Path, offset: int) -> dict[str, Any]:
    """Count the warnings and errors the router logged after start-up (text or JSON lines, app or gunicorn)."""
    counts = {"warning": 0, "error": 0, "worker_timeout": 0, "pool_full": 0}
    samples: list[str] = []
    with open(path, errors="replace") as f:
        f.seek(offset)
        for line in f:
            if "WORKER TIMEOUT" in line:
                counts["worker_timeout"] += 1
            if "Connection pool is full" in line:
                counts["pool_full"] += 1
            match = _LEVEL.search(line)
            if not match:
                continue
            level = next(g for g in match.groups() if g).lower()
            counts["warning" if level == "warning" else "error"] += 1
            if len(samples) < 5 and line.strip()[:300] not in samples:
                samples.append(line.strip()[:300])
    return {**counts, "samples": samples}


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _whole(url: str, body: bytes) -> dict[str, Any]:
    response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def _stream(url: str, body: bytes) -> tuple[int, str]:
    """(number of data events, concatenated content) of one streamed answer."""
    response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, stream=True, timeout=10)
    with response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
        raw = b"".join(response.iter_content(None))
    blocks = [b.strip() for b in raw.replace(b"\r\n", b"\n").split(b"\n\n")]
    events = [b[5:].strip() for b in blocks if b.startswith(b"data:")]
    if not events or events[-1] != b"[DONE]":
        raise RuntimeError(f"{url}: the stream does not end with [DONE]: {raw[-300:]!r}")
    content = ""
    for event in events[:-1]:
        for choice in json.loads(event).get("choices") or []:
            content += (choice.get("delta") or {}).get("content") or ""
    return len(events), content


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _git(*command: str) -> str:
    # Read-only git calls (no index refresh): other engineers share this checkout.
    done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()
