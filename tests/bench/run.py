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
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from tests.bench import cache, failstats, report, summary
from tests.bench.failover import DEFAULT_ENV, FAULT_MODES, run_failover
from tests.bench.load import ApacheBench, LoadGenerator, little, pick_generator
from tests.bench.peers import PEERS, Peer, PeerSkipped, default_cache, start_peer
from tests.bench.procs import Sampler, cpu_between, cpu_seconds, loadavg, sample_tree
from tests.bench.servers import HOST, LeanVendor
from tests.bench.stats import INCREMENTAL_SHARE, STALL_SECONDS
from tests.support.nginx import NGINX, Nginx
from tests.support.processes import ROOT, FakeVendorProcess, RouterProcess, router_config, wait_until

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
ROUTER_PATH = "/v1/chat/completions"
VENDOR, MODEL, KEY = "openai", "gpt-4o", "sk-bench-openai-0123456789abcdef"


def stream_pieces(count: int) -> list[str]:
    """The vendor's stream content: ``count`` pieces, as tests/bench/vendor.py ``--pieces`` makes them."""
    return [f"token{i:02d} " for i in range(count)]


@dataclass(frozen=True)
class Target:
    """One way to reach the vendor: directly, through the router, or through a peer gateway."""

    name: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    server_pid: int | None = None  # the process tree whose CPU and memory the rows report
    # The port whose connections are counted per process (the router's behind nginx).
    held_port: int | None = None


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


def responses_body(stream: bool) -> bytes:
    """The same conversation as a Responses API request (the router translates it onto chat)."""
    body: dict[str, Any] = {
        "model": "any-model",
        "instructions": "You are a helpful assistant.",
        "input": "Hello, how are you? Please answer in one sentence.",
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def messages_body(stream: bool) -> bytes:
    """The same conversation as an Anthropic Messages request (the router translates it onto chat).

    ``max_tokens`` is required by the Messages API; the router sends it on as
    ``max_completion_tokens``, which the vendor ignores.
    """
    body: dict[str, Any] = {
        "model": "any-model",
        "max_tokens": 1024,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": "Hello, how are you? Please answer in one sentence."}],
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Benchmark the router against its vendor called directly, and against peer gateways "
        "(--peers); or fail one of two vendors under load (--failover). See tests/bench/__init__.py.",
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
        help="the router's LOG_LEVEL; info (the production default) logs one access line per answered call",
    )
    parser.add_argument(
        "--vendor-server",
        default="lean",
        choices=("lean", "fake"),
        help="lean: tests/bench/vendor.py (default); fake: tests/support/fake_vendor.py (~50 µs CPU per stream event)",
    )
    parser.add_argument(
        "--loadgen",
        default="auto",
        choices=("auto", "ab", "wrk", "gevent"),
        help="auto: ab -k (apache2-utils) if installed, else wrk, else the gevent generator; every row is "
        "checked against Little's law (tests/bench/load.py)",
    )
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="also measure whole calls through nginx (configs/nginx/router.conf, 2 workers, upstream keepalive) "
        "in front of the router",
    )
    parser.add_argument(
        "--stream-client",
        default="epoll",
        choices=("epoll", "gevent"),
        help="the stream client's engine (tests/bench/streamclient.py); gevent costs ~2x the CPU per event",
    )
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, 1 s warm-up: a smoke run")
    parser.add_argument("--skip-nonstream", action="store_true")
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument(
        "--held-streams",
        default="1000",
        help="stream counts held with --held-interval between events (default 1000; empty: skip)",
    )
    parser.add_argument("--held-interval", type=float, default=0.1, help="seconds between events of held streams")
    parser.add_argument(
        "--responses-concurrency", default="1,16", help="POST /v1/responses whole, router only (empty: skip)"
    )
    parser.add_argument("--responses-streams", default="50,500", help="POST /v1/responses streamed (empty: skip)")
    parser.add_argument(
        "--messages-concurrency", default="1,16", help="POST /v1/messages whole, router only (empty: skip)"
    )
    parser.add_argument("--messages-streams", default="50,500", help="POST /v1/messages streamed (empty: skip)")
    parser.add_argument(
        "--cost-streams",
        type=int,
        default=100,
        help="router CPU to start a stream and per event: bursts of this many streams of 1 and 41 chunks "
        "(3 each), fitted to CPU = start + events x per event (0: skip)",
    )
    parser.add_argument(
        "--peers",
        default="",
        help="other gateways measured in the same run on the same vendor, interleaved: portkey,litellm; installed on "
        "first use into --peer-cache (npm, pip), a peer that cannot be is skipped, saying why (tests/bench/peers.py)",
    )
    parser.add_argument("--peer-cache", type=Path, default=default_cache(), help="where peers are installed")
    parser.add_argument(
        "--peer-install-timeout", type=float, default=300.0, help="seconds a peer's install may take, else skipped"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the benchmark N times; report each figure as median (range)"
    )
    parser.add_argument("--soak-concurrency", type=int, default=16, help="soak: non-stream concurrency")
    parser.add_argument("--soak-streams", type=int, default=100, help="soak: streams held at all times")
    parser.add_argument("--sample-every", type=float, default=5.0, help="soak: seconds between RSS samples")
    parser.add_argument(
        "--router-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra router setting for this run (e.g. BUDGET='1000000000 tokens per day' to measure "
        "budgets on the hot path); repeatable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (router log, raw outputs)")
    parser.add_argument("--out", type=Path, help="JSON result path (default: tests/bench/results/<time>.json)")
    caching = parser.add_argument_group(
        "cache", "--cache: agent sessions through several keys of one model, affinity on and off (tests/bench/cache.py)"
    )
    caching.add_argument("--cache", action="store_true", help="run the cache benchmark instead")
    caching.add_argument("--cache-sessions", type=int, default=50, help="sessions")
    caching.add_argument("--cache-turns", type=int, default=10, help="turns per session, each prompt growing")
    caching.add_argument("--cache-keys", type=int, default=4, help="credentials of the one model")
    caching.add_argument("--cache-concurrency", type=int, default=10, help="sessions running at once")
    caching.add_argument("--cache-shared-kb", type=int, default=40, help="KB of system prompt every session shares")
    caching.add_argument("--cache-own-kb", type=int, default=10, help="KB of context of each session's own")
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
    args.held_streams = [int(k) for k in args.held_streams.split(",") if k]
    args.responses_concurrency = [int(c) for c in args.responses_concurrency.split(",") if c]
    args.responses_streams = [int(k) for k in args.responses_streams.split(",") if k]
    args.messages_concurrency = [int(c) for c in args.messages_concurrency.split(",") if c]
    args.messages_streams = [int(k) for k in args.messages_streams.split(",") if k]
    args.peers = [name for name in args.peers.split(",") if name]
    if unknown_peers := set(args.peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(unknown_peers)}; choose from {PEERS}")
    if args.peers and args.vendor_server != "lean":
        parser.error("--peers needs the lean vendor (peers drop x_fake; only it streams by default)")
    if args.repeat < 1:
        parser.error("--repeat wants 1 or more")
    if args.repeat > 1 and (args.soak or args.failover or args.cache):
        parser.error("--repeat repeats the main benchmark only")
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
    kind = "failover" if args.failover else "cache" if args.cache else "soak" if args.soak else "bench"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    try:
        if args.failover:
            results.append(failover(args, workdir))
        elif args.cache:
            results.append({"meta": machine_meta(), **cache.run_cache(args, workdir, say)})
        else:
            for number in range(1, args.repeat + 1):
                if args.repeat > 1:
                    say(f"run {number} of {args.repeat}")
                rundir = workdir / f"run{number}"
                rundir.mkdir()
                bench = Bench(args, rundir)
                try:
                    results.append(bench.soak() if args.soak else bench.run())
                finally:
                    bench.stop()
    except BaseException:
        print(f"work directory (router log, raw outputs) kept: {workdir}", file=sys.stderr)
        raise
    outs = []
    for number, result in enumerate(results, 1):
        suffix = f"-run{number}" if len(results) > 1 else ""
        out = args.out.with_name(f"{args.out.stem}{suffix}{args.out.suffix}") if args.out else None
        out = out or RESULTS / f"{kind}-{stamp}{suffix}.json"
        out.write_text(json.dumps(result, indent=2))
        outs.append(out)
    (RESULTS / f"latest-{kind}.json").write_text(json.dumps(results[-1], indent=2))
    tables = {"failover": failstats.table, "cache": cache.table, "soak": report.soak_table, "bench": report.table}
    print(tables[kind](results[-1]))
    if kind == "bench":
        figures = summary.summarize(results)
        goals = summary.goals(figures)
        paths = ["direct", "router", *results[-1]["peers"]["running"]]
        ks = sorted({row["concurrency"] for row in results[-1]["streams"]})
        print(f"\nAll paths{'' if len(results) == 1 else f', median of {len(results)} runs (range)'}:")
        print(summary.paths_table(figures, paths, ks))
        translated_ks = sorted(
            {row["concurrency"] for name in ("responses", "messages") for row in results[-1][name]["streams"]}
        )
        if any(results[-1][name]["nonstream"] or results[-1][name]["streams"] for name in ("responses", "messages")):
            print("\nChat, Responses and Messages through the router (router CPU ms per call, and over chat's):")
            print(summary.endpoints_table(figures, translated_ks or ks))
            note = results[-1]["messages"]["note"]
            print(f"POST /v1/messages: {note}" if note else summary.messages_verdict(figures))
        if len(results) > 1:
            print(f"\nGoals, median of {len(results)} runs (range), runs interleaved by path within each run")
            print(summary.goals_table(goals, len(results)))
            print(f"\nEvery figure over the {len(results)} runs")
            print(summary.all_figures_table(figures))
            out = RESULTS / f"{kind}-{stamp}-median.json"
            document = {"runs": [str(o) for o in outs], "figures": figures, "goals": goals}
            out.write_text(json.dumps(document, indent=2))
            (RESULTS / "latest-median.json").write_text(json.dumps(document, indent=2))
            outs.append(out)
    print("\nJSON: " + ", ".join(str(o) for o in outs))
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
        # The lean vendor streams --pieces chunks --interval apart by default too: peers drop x_fake.
        self.vendor: FakeVendorProcess | LeanVendor = (
            LeanVendor(pieces=args.pieces, interval=args.interval)
            if args.vendor_server == "lean"
            else FakeVendorProcess()
        )
        self.router: RouterProcess | None = None
        self.peers: list[Peer] = []
        self.peers_skipped: dict[str, str] = {}
        self.nginx: Nginx | None = None
        try:
            self._start_router(args, workdir)
            self._start_peers(args, workdir)
            if args.nginx:
                if NGINX is None:
                    raise SystemExit("--nginx: nginx is not installed (Debian: apt-get install nginx-light)")
                self.nginx = Nginx(workdir / "nginx", self.router_port, workers=2)
                say(f"nginx in front of the router on port {self.nginx.port} (2 workers, upstream keepalive)")
        except BaseException:
            self.stop()
            raise
        # The router calls <OPENAI_BASE_URL>/chat/completions; the direct path is the same URL.
        self.direct = Target("direct", self.vendor.port, f"/{VENDOR}/chat/completions")
        self.via_router = Target("router", self.router_port, ROUTER_PATH, server_pid=self.router_pid)
        self.via_peers = [
            Target(peer.name, peer.port, ROUTER_PATH, peer.headers, server_pid=peer.pid) for peer in self.peers
        ]
        # The router behind nginx: the server CPU columns are the router's (nginx's is not counted).
        self.via_nginx = (
            [
                Target(
                    "nginx+router", self.nginx.port, ROUTER_PATH, server_pid=self.router_pid, held_port=self.router_port
                )
            ]
            if self.nginx
            else []
        )
        self.responses = Target("router", self.router_port, "/v1/responses", server_pid=self.router_pid)
        self.messages = Target("router", self.router_port, "/v1/messages", server_pid=self.router_pid)
        self.whole_body = request_body(stream=False, interval=args.interval, pieces=args.pieces)
        self.stream_body = request_body(stream=True, interval=args.interval, pieces=args.pieces)
        self.bodies = {
            "stream": self._body_file("stream", self.stream_body),
            "held": self._body_file("held", request_body(stream=True, interval=args.held_interval, pieces=args.pieces)),
            "responses": self._body_file("responses", responses_body(stream=True)),
            "messages": self._body_file("messages", messages_body(stream=True)),
        }

    def _body_file(self, name: str, body: bytes) -> Path:
        path = self.workdir / f"{name}-body.json"
        path.write_bytes(body)
        return path

    def _start_peers(self, args: argparse.Namespace, workdir: Path) -> None:
        for name in args.peers:
            say(f"starting peer {name} (installing into {args.peer_cache} if needed)")
            try:
                peer = start_peer(
                    name,
                    self.vendor.url(VENDOR),
                    KEY,
                    args.workers,
                    args.peer_cache,
                    args.peer_install_timeout,
                    workdir / f"{name}.log",
                )
            except PeerSkipped as skipped:
                self.peers_skipped[name] = str(skipped)
                say(f"peer {name} skipped: {skipped}")
                continue
            self.peers.append(peer)
            say(f"peer {name} running: {peer.version}, {peer.command}")

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
        for item in args.router_env:
            name, separator, value = item.partition("=")
            if not separator or not name:
                raise SystemExit(f"--router-env wants NAME=VALUE, got {item!r}")
            env[name] = value
        self.router = RouterProcess(env, workdir / "router.log", workers=args.workers)
        self.router_port = self.router.port
        self.log_offset = 0

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for peer in self.peers:
            peer.stop()
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
        direct = _whole(self.direct, self.whole_body)
        text = direct["choices"][0]["message"]["content"]
        for target in (self.via_router, *self.via_peers):
            answer = _whole(target, self.whole_body)
            if answer["choices"][0]["message"]["content"] != text:
                raise RuntimeError(f"{target.name}'s answer differs from the vendor's: {answer!r} vs {direct!r}")
        expected = "".join(stream_pieces(self.args.pieces))
        counts = {}
        for target in (self.direct, self.via_router, *self.via_peers):
            events, content = _stream(target, self.stream_body)
            if content != expected:
                raise RuntimeError(f"{target.name} stream content {content!r}, expected {expected!r}")
            counts[target.name] = events
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"the paths' streams differ in events: {counts}")
        self.responses_note = self._check_responses(text, expected)
        self.messages_note = self._check_messages(text, expected)
        time.sleep(1)  # the last worker's start-up lines
        assert self.router is not None
        self.log_offset = self.router.log_path.stat().st_size
        return counts["direct"]

    def _check_responses(self, text: str, expected: str) -> str | None:
        """None when POST /v1/responses answers as chat does; else why its rows are skipped."""
        if not (self.args.responses_concurrency or self.args.responses_streams):
            return "not asked for"
        if self.args.vendor_server != "lean":
            # The Responses request carries no x_fake; only the lean vendor streams the bench's shape without it.
            return "skipped: needs the lean vendor (--vendor-server lean)"
        url = self.url(self.responses)
        response = requests.post(url, data=responses_body(stream=False), headers=_JSON, timeout=10)
        if response.status_code == 404:
            return "skipped: POST /v1/responses answered 404 (this router has no Responses endpoint yet)"
        if response.status_code != 200:
            raise RuntimeError(f"POST /v1/responses answered {response.status_code}: {response.text[:500]}")
        output = "".join(
            part.get("text", "")
            for item in response.json().get("output") or []
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        )
        if output != text:
            raise RuntimeError(f"the Responses answer {output!r} differs from chat's {text!r}")
        streamed = requests.post(url, data=responses_body(stream=True), headers=_JSON, timeout=10)
        deltas = [
            json.loads(line[5:]).get("delta", "")
            for line in streamed.text.splitlines()
            if line.startswith("data:") and '"response.output_text.delta"' in line
        ]
        if streamed.status_code != 200 or "".join(deltas) != expected or "response.completed" not in streamed.text:
            raise RuntimeError(f"the Responses stream is not the vendor's: {streamed.text[-500:]!r}")
        return None

    def _check_messages(self, text: str, expected: str) -> str | None:
        """None when POST /v1/messages answers as chat does; else why its rows are skipped.

        Whole: the Message's text blocks hold chat's answer. Streamed: one text_delta per vendor
        piece, together the vendor's stream, and message_stop at the end.
        """
        if not (self.args.messages_concurrency or self.args.messages_streams):
            return "not asked for"
        if self.args.vendor_server != "lean":
            # The Messages request carries no x_fake; only the lean vendor streams the bench's shape without it.
            return "skipped: needs the lean vendor (--vendor-server lean)"
        url = self.url(self.messages)
        response = requests.post(url, data=messages_body(stream=False), headers=_JSON, timeout=10)
        if response.status_code == 404:
            return "skipped: POST /v1/messages answered 404 (this router has no Messages endpoint yet)"
        if response.status_code != 200:
            raise RuntimeError(f"POST /v1/messages answered {response.status_code}: {response.text[:500]}")
        message = response.json()
        output = "".join(block.get("text", "") for block in message.get("content") or [] if block.get("type") == "text")
        if message.get("type") != "message" or output != text:
            raise RuntimeError(f"the Messages answer {message!r} differs from chat's {text!r}")
        streamed = requests.post(url, data=messages_body(stream=True), headers=_JSON, timeout=10)
        events = [json.loads(line[5:]) for line in streamed.text.splitlines() if line.startswith("data:")]
        deltas = [
            event["delta"]["text"]
            for event in events
            if event.get("type") == "content_block_delta" and event["delta"].get("type") == "text_delta"
        ]
        if (
            streamed.status_code != 200
            or "".join(deltas) != expected
            or len(deltas) != self.args.pieces
            or not events
            or events[-1].get("type") != "message_stop"
        ):
            raise RuntimeError(f"the Messages stream is not the vendor's: {streamed.text[-500:]!r}")
        return None

    def url(self, target: Target) -> str:
        return _url(target)

    # -- one measurement, observed --------------------------------------------------------------

    def observe(
        self, action: Callable[[], dict[str, Any]], fds: bool = False, server: int | None = None
    ) -> dict[str, Any]:
        """Run ``action`` while sampling the server (the router unless a peer's pid is given); add its
        CPU and memory, and the vendor's CPU, to the result (``router_*`` keys name that server)."""
        root = server or self.router_pid
        with Sampler(root, every=0.5, fds=fds) as sampler:
            before = sample_tree(root)
            vendor_before = cpu_seconds(self.vendor.process.pid)
            started = time.monotonic()
            result = action()
            wall = time.monotonic() - started
            vendor_cpu = cpu_seconds(self.vendor.process.pid) - vendor_before
            after = sample_tree(root)
        router_cpu = cpu_between(before, after)
        result["observed"] = {
            "server_pid": root,
            "wall_s": round(wall, 3),
            "router_cpu_s": round(router_cpu, 3),
            "router_cpu_share": round(router_cpu / wall, 3),  # of one core; the machine has os.cpu_count()
            # Per worker: gevent workers accept greedily, so one may hold most connections.
            "worker_cpu_share": [
                round((after.cpu[pid] - before.cpu[pid]) / wall, 3)
                for pid in sorted(after.cpu)
                if pid in before.cpu and pid != root
            ],
            "vendor_cpu_share": round(vendor_cpu / wall, 3),
            "router_rss_peak_mb": round(sampler.peak_rss_mb, 1),
            "router_pss_peak_mb": round(sampler.peak_pss_mb, 1),
            "workers_replaced": sorted(set(before.cpu) ^ set(after.cpu)),
            "loadavg": loadavg(),
        }
        if fds:
            peaks = sampler.peak_fds()
            result["observed"]["worker_fds_peak"] = [n for pid, n in sorted(peaks.items()) if pid != root]
        return result

    def whole_load(
        self, target: Target, concurrency: int, duration: float, body: bytes | None = None
    ) -> dict[str, Any]:
        body = self.whole_body if body is None else body
        return self.generator.run(HOST, target.port, target.path, body, concurrency, duration, target.headers)

    def stream_burst(
        self,
        target: Target,
        streams: int,
        expected: int,
        body: str = "stream",
        interval: float | None = None,
        ramp: float | None = None,
    ) -> dict[str, Any]:
        """K streams at once through ``target`` (``body``: stream, held, responses, messages, or a body file's path)."""
        out = self.workdir / f"streams-{target.name}-{streams}.json"
        body_file = self.bodies.get(body, body)
        command = [
            sys.executable,
            "-m",
            "tests.bench.streamclient",
            f"--host={HOST}",
            f"--port={target.port}",
            f"--path={target.path}",
            f"--body-file={body_file}",
            f"--streams={streams}",
            f"--expected-events={expected}",
            f"--interval={self.args.interval if interval is None else interval}",
            f"--engine={self.args.stream_client}",
            f"--ramp={self.args.ramp if ramp is None else ramp}",
            f"--out={out}",
            *(f"--header={name}:{value}" for name, value in target.headers.items()),
        ]
        if body in ("responses", "messages"):
            command.append(f"--dialect={body}")
        subprocess.run(command, cwd=ROOT, check=True, timeout=600)
        return json.loads(out.read_text())

    # -- the benchmark ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        expected = self.check()
        time.sleep(1)
        idle = sample_tree(self.router_pid)
        say(f"checked every path; router RSS {idle.rss_mb:.1f} MB idle ({self.rss_started.rss_mb:.1f} MB at start)")
        result: dict[str, Any] = {
            "meta": self.meta(),
            "nonstream": [],
            "streams": [],
            "held_streams": [],
            "responses": {"note": self.responses_note, "nonstream": [], "streams": []},
            "messages": {"note": self.messages_note, "nonstream": [], "streams": []},
            "peers": {
                "running": {peer.name: {"version": peer.version, "command": peer.command} for peer in self.peers},
                "skipped": self.peers_skipped,
            },
        }
        self.peak_rss = self.peak_pss = 0.0
        # Every path at one load, then the next load: peers interleaved with the router and the direct path.
        paths = (self.direct, self.via_router, *self.via_peers)

        if not args.skip_nonstream:
            for concurrency in args.concurrency:
                for target in (*paths, *self.via_nginx):
                    result["nonstream"].append(self.whole_row(target, concurrency))

        if not args.skip_streams:
            for streams in args.streams:
                for target in paths:
                    result["streams"].append(self.stream_row(target, streams, expected))
            for streams in args.held_streams:
                for target in (self.direct, self.via_router):
                    row = self.stream_row(target, streams, expected, body="held", interval=args.held_interval)
                    result["held_streams"].append(row)

        if self.responses_note is None:
            say("POST /v1/responses, the router only (its vendor call is the chat completion above)")
            for concurrency in args.responses_concurrency:
                row = self.whole_row(self.responses, concurrency, responses_body(stream=False))
                result["responses"]["nonstream"].append(row)
            for streams in args.responses_streams:
                row = self.stream_row(self.responses, streams, args.pieces, body="responses")
                result["responses"]["streams"].append(row)
        elif args.responses_concurrency or args.responses_streams:
            say(f"Responses rows {self.responses_note}")

        if self.messages_note is None:
            say("POST /v1/messages, the router only (its vendor call is the chat completion above)")
            for concurrency in args.messages_concurrency:
                row = self.whole_row(self.messages, concurrency, messages_body(stream=False))
                result["messages"]["nonstream"].append(row)
            for streams in args.messages_streams:
                row = self.stream_row(self.messages, streams, args.pieces, body="messages")
                result["messages"]["streams"].append(row)
        elif args.messages_concurrency or args.messages_streams:
            say(f"Messages rows {self.messages_note}")

        if args.cost_streams:
            result["stream_cost"] = self.stream_cost(expected)

        say("letting the router settle for 5 s")
        time.sleep(5)
        after = sample_tree(self.router_pid)
        result["memory"] = {
            "started_rss_mb": round(self.rss_started.rss_mb, 1),
            "idle_rss_mb": round(idle.rss_mb, 1),
            "under_load_peak_rss_mb": round(self.peak_rss, 1),
            "after_load_rss_mb": round(after.rss_mb, 1),
            "idle_pss_mb": round(idle.pss_mb, 1),
            "under_load_peak_pss_mb": round(self.peak_pss, 1),
            "after_load_pss_mb": round(after.pss_mb, 1),
            "processes": len(after.rss_kb),
        }
        result["stream_events"] = expected
        self.finish_meta(result, after)
        result["goals"] = summary.goals(summary.summarize([result]))
        return result

    def whole_row(self, target: Target, concurrency: int, body: bytes | None = None) -> dict[str, Any]:
        """One non-stream measurement through ``target``, after its warm-up."""
        args = self.args
        if args.warmup:
            self.whole_load(target, concurrency, args.warmup, body)
        say(f"non-stream c={concurrency} {target.name} {target.path} for {args.duration:g} s")
        # Which process holds the connections, looked at halfway through; calls per router worker.
        held: dict[str, int] = {}
        port = target.held_port or target.port
        look = threading.Timer(args.duration / 2, lambda: held.update(connections_by_pid(port)))
        calls_before = self.calls_by_worker() if target.server_pid == self.router_pid else None
        look.start()
        try:
            row = self.observe(
                lambda: self.whole_load(target, concurrency, args.duration, body), server=target.server_pid
            )
        finally:
            look.cancel()
        row.update(concurrency=concurrency, target=target.name, path=target.path)
        row["little"] = little(row, concurrency)
        row["connections_by_pid"] = held
        if calls_before is not None:
            after = self.calls_by_worker()
            row["calls_by_worker"] = {pid: after[pid] - calls_before.get(pid, 0) for pid in sorted(after)}
        if target.server_pid is not None and row["requests"]:
            row["router_cpu_ms_per_call"] = round(row["observed"]["router_cpu_s"] * 1000 / row["requests"], 3)
        self._track_memory(target, row)
        say(report.nonstream_line(row))
        return row

    def stream_row(
        self, target: Target, streams: int, expected: int, body: str = "stream", interval: float | None = None
    ) -> dict[str, Any]:
        """One burst of K streams through ``target``, after a discarded one."""
        if not self.args.no_stream_warmup:
            self.stream_burst(target, streams, expected, body, interval)
        say(f"streams K={streams} {target.name} {target.path} ({body})")
        row = self.observe(
            lambda: self.stream_burst(target, streams, expected, body, interval), fds=True, server=target.server_pid
        )
        row.update(
            target=target.name, path=target.path, interval_s=self.args.interval if interval is None else interval
        )
        if target.server_pid is not None and row["streams"]:
            row["router_cpu_ms_per_stream"] = round(row["observed"]["router_cpu_s"] * 1000 / row["streams"], 3)
        self._track_memory(target, row)
        say(report.stream_line(row))
        return row

    def _track_memory(self, target: Target, row: dict[str, Any]) -> None:
        if target.server_pid == self.router_pid:
            self.peak_rss = max(self.peak_rss, row["observed"]["router_rss_peak_mb"])
            self.peak_pss = max(self.peak_pss, row["observed"]["router_pss_peak_mb"])

    def calls_by_worker(self) -> dict[str, int]:
        """Vendor calls made so far by each router worker (its own Prometheus multiprocess file)."""
        from prometheus_client.mmap_dict import MmapedDict

        calls: dict[str, int] = {}
        for path in (self.workdir / "metrics").glob("counter_*.db"):
            pid = path.stem.removeprefix("counter_")
            total = 0.0
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                if json.loads(key)[0] == "router_upstream_requests":
                    total += value
            calls[pid] = int(total)
        return calls

    def whole_cost(self, calls: int) -> dict[str, Any]:
        """The router's CPU per call, like with like: ab at c=4, ``calls`` calls after as many
        discarded, each call on a new connection: a whole call, and a stream whose vendor sends all
        its events at once (one content piece); and a whole call on kept-alive connections.

        The stream client opens a connection per stream, so a stream's start carries a connection's
        accept, greenlet, parser and close; the whole call it is held against must carry them too.
        ab speaks HTTP/1.0, so that stream is sent unchunked, closed at its end: the same path
        through the router but for the chunk framing.
        """
        binary = shutil.which("ab")
        if binary is None:
            return {"note": "ab not installed: no CPU per call on new connections"}
        stream = request_body(stream=True, interval=1e-6, pieces=1)  # the lean vendor's interval 0 is its default
        out: dict[str, Any] = {}
        for name, keepalive, body in (
            ("new_connection", False, self.whole_body),
            ("keepalive", True, self.whole_body),
            ("stream_new_connection", False, stream),
        ):
            generator = ApacheBench(self.workdir, binary, keepalive=keepalive)

            def run(g: ApacheBench = generator, b: bytes = body) -> dict[str, Any]:
                return g.run(HOST, self.via_router.port, ROUTER_PATH, b, 4, 0, requests=calls)

            run()
            cpu = calls_done = 0.0
            for _ in range(3):
                row = self.observe(run)
                cpu += row["observed"]["router_cpu_s"]
                calls_done += row["requests"]
            out[f"{name}_cpu_ms_per_call"] = round(cpu * 1000 / calls_done, 4)
        say(
            f"  router CPU per call on a new connection: whole {out['new_connection_cpu_ms_per_call']:.3f} ms, "
            f"stream of one piece {out['stream_new_connection_cpu_ms_per_call']:.3f} ms; whole kept alive "
            f"{out['keepalive_cpu_ms_per_call']:.3f} ms"
        )
        return out

    def stream_cost(self, expected: int) -> dict[str, Any]:
        """The router's CPU to start a stream and per relayed event.

        Bursts of K streams of 1 and of 41 content chunks (3 each, after one discarded), spread over
        0.5 s so they overlap little; CPU per stream = start + events x per event, solved from the
        two shapes. A stream has the pieces plus its role, finish and [DONE] events.
        """
        args = self.args
        k = args.cost_streams
        points = []
        for pieces in (1, 41):
            events = expected - args.pieces + pieces
            path = self._body_file(f"cost-{pieces}", request_body(stream=True, interval=args.interval, pieces=pieces))
            say(f"stream cost: {k} streams of {events} events through the router, 1 + 3 bursts")
            self.stream_burst(self.via_router, k, events, str(path), ramp=0.5)
            cpu = streams = 0.0
            for _ in range(3):
                row = self.observe(lambda p=path, e=events: self.stream_burst(self.via_router, k, e, str(p), ramp=0.5))
                if row["ok"] != row["streams"]:
                    raise RuntimeError(f"stream cost: {row['streams'] - row['ok']} streams failed: {row['problems']}")
                cpu += row["observed"]["router_cpu_s"]
                streams += row["streams"]
            points.append({"pieces": pieces, "events": events, "cpu_ms_per_stream": round(cpu * 1000 / streams, 4)})
        short, long = points
        per_event = (long["cpu_ms_per_stream"] - short["cpu_ms_per_stream"]) / (long["events"] - short["events"])
        start = short["cpu_ms_per_stream"] - per_event * short["events"]
        say(f"  router CPU to start a stream {start:.3f} ms, per relayed event {per_event * 1000:.1f} µs")
        whole = self.whole_cost(2000)
        call = whole.get("new_connection_cpu_ms_per_call")
        stream = whole.get("stream_new_connection_cpu_ms_per_call")
        return {
            "streams": k,
            "points": points,
            "start_ms": round(start, 3),
            "per_event_us": round(per_event * 1000, 2),
            "whole_call": whole,
            # Like with like: the same client, the same concurrency, a new connection each.
            "start_over_whole_call": round(stream / call, 3) if call and stream else None,
            # The fitted start (bursts, events 20 ms apart) over the same whole call.
            "fitted_start_over_whole_call": round(start / call, 3) if call else None,
        }

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
                f"--body-file={self.bodies['stream']}",
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
                "router_env": args.router_env,
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


def connections_by_pid(port: int) -> dict[str, int]:
    """Established connections to ``port``, by the pid of the process holding the server's end (``ss``)."""
    command = ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(Counter(re.findall(r"pid=(\d+)", done.stdout)))


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


_JSON = {"Content-Type": "application/json"}


def _url(target: Target) -> str:
    return f"http://{HOST}:{target.port}{target.path}"


def _whole(target: Target, body: bytes) -> dict[str, Any]:
    url = _url(target)
    response = requests.post(url, data=body, headers={**_JSON, **target.headers}, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def _stream(target: Target, body: bytes) -> tuple[int, str]:
    """(number of data events, concatenated content) of one streamed answer."""
    url = _url(target)
    response = requests.post(url, data=body, headers={**_JSON, **target.headers}, stream=True, timeout=10)
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
