"""The chaos run itself: start the cluster, load it, break things on schedule, measure, report."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.chaos import report as reporting
from tests.chaos.cluster import CLIENT_KEYS, Cluster
from tests.chaos.faults import FLAP_CYCLE, STEADY_BEHAVIOUR, Events, Flapper, Timeline
from tests.chaos.observe import Sample, Sampler, sample_cluster
from tests.support.processes import ROOT, wait_until

RESULTS = ROOT / "tests" / "chaos" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description="The chaos run (make chaos).")
    parser.add_argument("--minutes", type=float, default=10, help="how long the clients run (default 10)")
    parser.add_argument("--event-every", type=float, default=60, help="seconds between operator events (60)")
    parser.add_argument("--flap-seconds", type=float, default=10, help="length of each flapping-vendor phase (10)")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between resource samples (10)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds after which nothing may grow (120; 40%% of shorter runs)"
    )
    parser.add_argument("--out", type=Path, default=None, help="result directory (tests/chaos/results/<time>)")
    parser.add_argument(
        "--report", type=Path, default=None, help="only print the report of the run saved in this directory"
    )
    args = parser.parse_args(argv)
    if not 0.5 <= args.minutes <= 60:
        parser.error("--minutes must be between 0.5 and 60")
    if args.event_every < 10 or args.flap_seconds < 2 or args.sample_every < 1:
        parser.error("--event-every >= 10, --flap-seconds >= 2, --sample-every >= 1")
    return args


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


def smoke(base: str) -> None:
    """Every API answers through nginx before the load starts."""
    auth = {"Authorization": f"Bearer {CLIENT_KEYS['app']}"}
    calls = [
        ("/v1/chat/completions", {"model": "any-model", "messages": [{"role": "user", "content": "hi"}]}, auth),
        ("/v1/responses", {"model": "any-model", "input": "hi"}, auth),
        ("/v1/embeddings", {"model": "any-model", "input": "hi"}, auth),
        (
            "/v1/messages",
            {"model": "any-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
            {"x-api-key": CLIENT_KEYS["agent"]},
        ),
    ]
    for path, body, headers in calls:
        answer = requests.post(base + path, json=body, headers=headers, timeout=10)
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code} before the run: {answer.text[:300]}")


def settle(cluster: Cluster, timeout: float = 60) -> None:
    """Wait until no stream is in flight and no worker holds a client connection (bounded)."""

    def idle() -> bool:
        sample = sample_cluster(cluster)
        streams = [(m or {}).get("router_streams_in_flight") for m in sample.metrics.values()]
        clients = [f["clients"] for ws in sample.workers.values() for f in ws.values()]
        return all(s == 0 for s in streams) and not any(clients)

    try:
        wait_until(idle, timeout=timeout, interval=1, message="streams and client connections back to 0")
    except TimeoutError as exc:
        say(f"{exc}: reported as found")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return write_report(args.report)
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(120.0, duration * 0.4)
    out = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    command = "make chaos" if not argv else "python -m tests.chaos " + " ".join(argv)
    say(
        f"{args.minutes:g} min, an event every {args.event_every:g} s, flap phases of {args.flap_seconds:g} s "
        f"({', '.join(FLAP_CYCLE)}); results in {out}"
    )
    timeline = Timeline()
    cluster = Cluster(out / "cluster", STEADY_BEHAVIOUR)
    threads: list = []
    load: subprocess.Popen | None = None
    seen_pids: set[int] = set()
    try:
        smoke(cluster.nginx.base)
        before = sample_cluster(cluster, detail=True)
        say(
            f"cluster up: nginx {cluster.nginx.base}, instances {[i.port for i in cluster.instances]}, "
            f"vendors {cluster.fake.base}, redis {cluster.redis.port}"
        )
        start = time.time()
        until = start + duration
        rows_path = out / "rows.jsonl"
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaos.clients",
                f"--port={cluster.nginx.port}",
                f"--duration={duration}",
                f"--out={rows_path}",
            ],
            cwd=ROOT,
        )
        sampler = Sampler(cluster, args.sample_every)
        flapper = Flapper(cluster.fake.base, args.flap_seconds, until, timeline)
        events = Events(cluster, args.event_every, until - 5, timeline)
        threads = [sampler, flapper, events]
        for thread in threads:
            thread.start()
        last_say = start
        while load.poll() is None and time.time() < until + 120:
            time.sleep(1)
            if time.time() - last_say >= 60:
                last_say = time.time()
                done = sum(1 for _ in rows_path.open()) if rows_path.exists() else 0
                kinds = [e["kind"] for e in timeline.events]
                say(f"{(time.time() - start) / 60:.1f} min: {done} requests, events {kinds}")
        if load.poll() is None:
            raise RuntimeError("the clients did not finish in time")
        flapper.stopping.set()
        events.stopping.set()
        flapper.join(30)
        events.join(120)  # an instance restart may be draining
        say("load stopped; waiting for streams and connections to settle")
        settle(cluster)
        time.sleep(2)
        after = sample_cluster(cluster, detail=True)
        sampler.stopping.set()
        sampler.join(30)
        for thread in threads:
            if thread.error is not None:
                raise RuntimeError(f"{thread.name} failed: {thread.error!r}") from thread.error
        for sample in [before, *sampler.samples, after]:
            for workers in sample.workers.values():
                seen_pids.update(workers)
        samples = sampler.samples
    finally:
        for thread in threads:
            thread.stopping.set()
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(10)
        cluster_pids = cluster.pids()
        cluster.stop()
    time.sleep(1)
    leftovers = sorted(pid for pid in {*seen_pids, *cluster_pids} if alive(pid))
    facts = {
        "start": start,
        "duration": duration,
        "period": args.event_every,
        "warmup": warmup,
        "command": command,
        "leftovers": leftovers,
    }
    (out / "run.json").write_text(json.dumps(facts, indent=1))
    (out / "timeline.json").write_text(json.dumps({"phases": timeline.phases, "events": timeline.events}, indent=1))
    (out / "samples.json").write_text(json.dumps([s.as_dict() for s in [before, *samples, after]]))
    return write_report(out)


def write_report(out: Path) -> int:
    """Read a run's files in ``out``, write report.md and summary.json, print the report; 0 if DONE."""
    facts = json.loads((out / "run.json").read_text())
    saved = json.loads((out / "timeline.json").read_text())
    timeline = Timeline(phases=[tuple(p) for p in saved["phases"]], events=saved["events"])
    samples = [Sample.from_dict(s) for s in json.loads((out / "samples.json").read_text())]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    routers = sorted((out / "cluster").glob("router-*/router.log"))
    logs = reporting.read_logs(
        {path.parent.name.removeprefix("router-"): path for path in routers}, out / "cluster" / "nginx"
    )
    text, summary = reporting.report(
        rows,
        timeline,
        samples[1:-1],
        samples[0],
        samples[-1],
        logs,
        facts["start"],
        facts["duration"],
        facts["period"],
        facts["warmup"],
        facts["command"],
        facts["leftovers"],
    )
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(text, flush=True)
    say(f"report in {out / 'report.md'}")
    return 0 if summary["done"] else 1


def main() -> None:
    os.chdir(ROOT)
    sys.exit(run(sys.argv[1:]))
