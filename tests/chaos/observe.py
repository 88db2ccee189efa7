"""What the run measures on the routers from outside: /proc per worker, and each instance's /metrics.

Per worker process (gunicorn's children of an instance's master; the master's short-lived
``check-config`` child on SIGHUP is left out): RSS (``VmRSS`` of /proc/PID/status), open file
descriptors (entries of /proc/PID/fd), and its established TCP connections, found by matching the
socket inodes of its descriptors against /proc/net/tcp{,6}: ``clients`` (nginx's connections to the
instance's port), ``vendors`` (to the fake vendor) and ``redis``.

Greenlets: the router exposes no greenlet count, and nothing outside a process can count them. A
gevent worker runs one greenlet per client connection it holds (an idle keep-alive connection
included) and no other per-request greenlet unless hedging is on (it is off here), so ``clients``
is the honest stand-in: greenlets serving requests = client connections held.

/metrics (each instance on its own port, summed over its workers by the router):
``router_streams_in_flight``, and the reload counters. The router has no gauge of requests in
flight; client connections held stand for it too, and drop to 0 once the load stops and nginx
has closed its idle keep-alive connections (``keepalive_timeout 4s``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.chaos.cluster import Cluster

__all__ = ["Sample", "Sampler", "sample_cluster", "worker_pids"]

_SOCKET = re.compile(r"socket:\[(\d+)\]")
_ESTABLISHED = "01"


@dataclass
class Sample:
    at: float  # time.time()
    # instance -> worker pid -> figures
    workers: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    # instance -> metric name -> value (None when /metrics did not answer)
    metrics: dict[str, dict[str, float] | None] = field(default_factory=dict)
    # The machine's 1-minute load average (other work on the machine shows here).
    load: float = 0.0
    # How late the sampler woke for this sample (s): a machine that stalls every process shows here.
    lag: float = 0.0

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Sample:
        workers = {name: {int(pid): w for pid, w in ws.items()} for name, ws in saved["workers"].items()}
        return cls(
            at=saved["at"],
            workers=workers,
            metrics=saved["metrics"],
            load=saved.get("load", 0.0),
            lag=saved.get("lag", 0.0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "workers": {name: {str(pid): w for pid, w in ws.items()} for name, ws in self.workers.items()},
            "metrics": self.metrics,
            "load": self.load,
            "lag": self.lag,
        }


def worker_pids(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            if int(text[text.rindex(")") + 2 :].split()[1]) != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"gunicorn" in f.read():
                    children.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(children)


def _tcp_table() -> dict[int, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for every TCP socket of this network namespace."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                    table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
        except OSError:
            continue
    return table


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen", "07": "close", "09": "last_ack"}
_METRICS_FILE = re.compile(r".*/([a-z_]+)_(\d+)\.db")


def _target_kind(
    target: str, pid: int, master: int, tcp: dict[int, tuple[int, int, str]], ports: dict[int, str]
) -> str:
    """What a descriptor is, in words that do not change from run to run (for the idle check)."""
    match = _SOCKET.fullmatch(target)
    if match:
        entry = tcp.get(int(match.group(1)))
        if entry is None:
            return "socket (not TCP)"
        local, remote, state = entry
        peer = "listener" if state == "0A" else "client" if local in ports else ports.get(remote, "other")
        return f"tcp {peer} {_STATES.get(state, state)}"
    match = _METRICS_FILE.fullmatch(target)
    if match:
        owner = {pid: "own", master: "master's"}.get(int(match.group(2)), "another process's")
        return f"metrics file {match.group(1)} ({owner})"
    if target.startswith(("pipe:", "anon_inode:")):
        return target.split("[", 1)[0].rstrip(":") + (target if target.startswith("anon_inode:") else "")
    if "wgunicorn-" in target:
        return "gunicorn heartbeat file"
    return "log file" if target.endswith(".log") else target


def _worker(
    pid: int, tcp: dict[int, tuple[int, int, str]], port: int, vendor: int, redis: int, master: int, detail: bool
) -> dict[str, Any]:
    fds = os.listdir(f"/proc/{pid}/fd")
    figures: dict[str, Any] = {
        "rss_kb": _rss_kb(pid),
        "fds": len(fds),
        "clients": 0,
        "vendors": 0,
        "redis": 0,
        "other_tcp": 0,
        "other_sockets": 0,  # listening, closing (close_wait...), not TCP
    }
    kinds: Counter[str] = Counter()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if detail:
            kinds[_target_kind(target, pid, master, tcp, {port: "client", vendor: "vendor", redis: "redis"})] += 1
        match = _SOCKET.fullmatch(target)
        if not match:
            continue
        entry = tcp.get(int(match.group(1)))
        if entry is None or entry[2] != _ESTABLISHED:
            figures["other_sockets"] += 1
            continue
        local, remote, _ = entry
        key = "clients" if local == port else {vendor: "vendors", redis: "redis"}.get(remote, "other_tcp")
        figures[key] += 1
    if detail:
        figures["kinds"] = dict(sorted(kinds.items()))
    return figures


def _metrics(base: str) -> dict[str, float] | None:
    try:
        text = requests.get(base + "/metrics", timeout=5).text
    except requests.RequestException:
        return None
    wanted = {}
    for line in text.splitlines():
        if line.startswith(("router_streams_in_flight ", "router_config_reloads_total{")):
            name, _, value = line.rpartition(" ")
            wanted[name] = float(value)
    return wanted


def sample_cluster(cluster: Cluster, detail: bool = False) -> Sample:
    """Every worker of every instance now; ``detail``: also what each descriptor is (``kinds``)."""
    with open("/proc/loadavg") as f:
        sample = Sample(at=time.time(), load=float(f.read().split()[0]))
    tcp = _tcp_table()
    vendor_port = cluster.fake.port if cluster.fake else -1
    redis_port = cluster.redis.port if cluster.redis else -1
    for instance in cluster.instances:
        workers: dict[int, dict[str, Any]] = {}
        master = instance.master_pid
        for pid in worker_pids(master) if master else []:
            try:
                workers[pid] = _worker(pid, tcp, instance.port, vendor_port, redis_port, master, detail)
            except OSError:
                continue  # exited while we looked
        sample.workers[instance.name] = workers
        sample.metrics[instance.name] = _metrics(instance.base) if master else None
    return sample


class Sampler(threading.Thread):
    """``sample_cluster`` every ``every`` seconds until stopped; the samples in ``samples``."""

    def __init__(self, cluster: Cluster, every: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.cluster = cluster
        self.every = every
        self.samples: list[Sample] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            due = time.monotonic()
            for _ in range(100_000):
                lag = max(time.monotonic() - due, 0.0)
                sample = sample_cluster(self.cluster)
                sample.lag = lag
                self.samples.append(sample)
                due += self.every
                if self.stopping.wait(max(due - time.monotonic(), 0.0)):
                    return
        except BaseException as exc:
            self.error = exc
