"""The failover benchmark (``python -m tests.bench --failover``): one vendor fails under constant load.

Two vendors, ``alpha`` and ``beta``, both played by one bench vendor process (tests/bench/vendor.py,
one path prefix each), sit behind the router with equal weights. A mixed closed-loop load
(tests/bench/mixload.py: whole calls and streams, concurrency 16 by default) runs for the whole
timeline; at ``--fault-at`` (10 s) ``beta`` starts failing, at ``--recover-at`` (40 s) it answers
normally again, and the run ends at ``--failover-duration`` (50 s). One run per fault mode, each
with a fresh router and vendor (no cooldown carried over):

- ``error``: beta answers every call with HTTP 500;
- ``stall``: beta reads the request and never answers;
- ``drop``: beta's streams send the role chunk and the first content chunk, then the connection
  closes (whole calls are answered as usual).

The router's settings for these runs (printed with the results, overridable with
``--failover-env NAME=VALUE``): ``COOLDOWN_SECONDS=5``, so the 30 s fault spans several cooldown
periods and a recovered vendor is used again within the run (the production default, 30, would
hide both); ``UPSTREAM_READ_TIMEOUT=1``, so a stalled vendor is a timeout after 1 s instead of
300 (the bench vendor answers within milliseconds and streams an event every 20 ms, so no healthy
call comes near it). Everything else is the router's default, cooldowns per worker included.

tests/bench/failstats.py turns the client's rows and the vendor's call log into the report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.bench import failstats
from tests.bench.servers import HOST, LeanVendor
from tests.support.processes import ROOT, RouterProcess, router_config, wait_until

__all__ = ["FAULT_MODES", "failover_env", "run_failover"]

FAULT_MODES = ("error", "stall", "drop")
HEALTHY, FAILING = "alpha", "beta"
ROUTER_PATH = "/v1/chat/completions"
DEFAULT_ENV = {"COOLDOWN_SECONDS": "5", "UPSTREAM_READ_TIMEOUT": "1"}


def failover_env(overrides: list[str]) -> dict[str, str]:
    """The router settings for the failover runs: the defaults above, then ``NAME=VALUE`` overrides."""
    env = dict(DEFAULT_ENV)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--failover-env wants NAME=VALUE, got {item!r}")
        env[name] = value
    return env


def run_failover(args: argparse.Namespace, workdir: Path, bodies: tuple[bytes, bytes], say: Any) -> dict[str, Any]:
    """One run per fault mode in ``args.failover_modes``; returns every run's figures."""
    env = failover_env(args.failover_env)
    timeline = failstats.Timeline(args.fault_at, args.recover_at, args.failover_duration)
    result: dict[str, Any] = {
        "router_env": env,
        "workers": args.workers,
        "timeline": timeline.as_dict(),
        "load": {"whole_clients": args.failover_whole, "stream_clients": args.failover_streams},
        "stream": {"pieces": args.pieces, "interval_s": args.interval},
        "runs": [],
    }
    for number, mode in enumerate(args.failover_modes, 1):
        say(f"failover run {number}/{len(args.failover_modes)}: {FAILING} {failstats.DESCRIBE[mode]}")
        run_dir = workdir / f"failover-{mode}"
        run_dir.mkdir()
        result["runs"].append(_one_run(mode, args, run_dir, env, timeline, bodies))
        say(failstats.run_summary_line(result["runs"][-1]))
    return result


def _one_run(
    mode: str,
    args: argparse.Namespace,
    workdir: Path,
    env: dict[str, str],
    timeline: failstats.Timeline,
    bodies: tuple[bytes, bytes],
) -> dict[str, Any]:
    vendor = LeanVendor(pieces=args.pieces, interval=args.interval, log_calls=True)
    router: RouterProcess | None = None
    try:
        router_env = router_config(
            workdir / "config",
            None,
            models=[{"vendor": HEALTHY, "model": "model-a"}, {"vendor": FAILING, "model": "model-b"}],
            credentials=[
                {"platform": HEALTHY, "type": "api-key", "value": "sk-bench-alpha-0123456789abcdef"},
                {"platform": FAILING, "type": "api-key", "value": "sk-bench-beta-0123456789abcdef"},
            ],
            vendors=[{"name": name, "base_url": vendor.url(name)} for name in (HEALTHY, FAILING)],
        )
        router_env.update(env, LOG_LEVEL=args.log_level, PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"))
        (workdir / "metrics").mkdir()
        router = RouterProcess(router_env, workdir / "router.log", workers=args.workers)
        expected = _check(router.port, bodies)
        (workdir / "whole.json").write_bytes(bodies[0])
        (workdir / "stream.json").write_bytes(bodies[1])
        out = workdir / "rows.json"
        command = [
            sys.executable,
            "-m",
            "tests.bench.mixload",
            f"--host={HOST}",
            f"--port={router.port}",
            f"--path={ROUTER_PATH}",
            f"--whole-body-file={workdir / 'whole.json'}",
            f"--stream-body-file={workdir / 'stream.json'}",
            f"--whole={args.failover_whole}",
            f"--streams={args.failover_streams}",
            f"--duration={timeline.end}",
            f"--expected-events={expected}",
            f"--interval={args.interval}",
            f"--out={out}",
        ]
        started = time.monotonic()
        load = subprocess.Popen(command, cwd=ROOT)
        try:
            _sleep_until(started + timeline.fault_at)
            vendor.fault(FAILING, mode)
            _sleep_until(started + timeline.recover_at)
            vendor.fault(FAILING, "ok")
            load.wait(timeline.end + 120)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        if load.returncode != 0:
            raise RuntimeError(f"the mixed load client failed (exit {load.returncode})")
        rows = json.loads(out.read_text())
        calls = vendor.calls()
        return failstats.analyze(mode, rows, calls, started, timeline, FAILING, float(env["COOLDOWN_SECONDS"]))
    finally:
        if router is not None:
            router.stop()
        vendor.stop()


def _check(port: int, bodies: tuple[bytes, bytes]) -> int:
    """Both vendors answer through the router, whole and streamed; returns the events a stream has."""
    url = f"http://{HOST}:{port}{ROUTER_PATH}"
    seen: set[str] = set()
    events = 0

    def answered_by_both() -> bool:
        nonlocal events
        for body, stream in ((bodies[0], False), (bodies[1], True)):
            response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
            if response.status_code != 200:
                raise RuntimeError(f"the router answered {response.status_code}: {response.text[:500]}")
            seen.add(response.headers.get("X-Vendor-Source", "?"))
            if stream:
                events = response.text.count("data:")
        return {HEALTHY, FAILING} <= seen

    wait_until(answered_by_both, timeout=30, interval=0.01, message="both vendors answering through the router")
    return events


def _sleep_until(when: float) -> None:
    time.sleep(max(when - time.monotonic(), 0.0))
