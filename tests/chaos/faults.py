"""What goes wrong during the run: the flapping vendor's schedule, and one operator event a minute.

Both run in threads of their own beside the clients and write what they did, when (time.time()),
into a shared ``Timeline``: the report reads the vendor's actual phases from it to tell an
unavoidable error (a stream committed to the flapping vendor while it was breaking streams) from
an avoidable one.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.chaos.cluster import FLAKY, REVOCABLE, VENDOR_KEYS, Cluster, models
from tests.chaos.observe import worker_pids

__all__ = [
    "BREAKS_STREAMS",
    "EVENTS",
    "FLAP_CYCLE",
    "STEADY_BEHAVIOUR",
    "Events",
    "Flapper",
    "Timeline",
]

# Every vendor when healthy: 8 content pieces 50 ms apart (a stream lasts about half a second).
STEADY_BEHAVIOUR: dict[str, Any] = {"chunks": 8, "interval": 0.05}

# The flapping vendor's modes: each a behaviour on top of the steady one.
MODES: dict[str, dict[str, Any]] = {
    "healthy": {},
    # HTTP 500 to everything.
    "http500": {"status": 500},
    # Reads the request and answers nothing for 30 s (the router gives up after its read timeout).
    "stall": {"delay": 30},
    # Streams go silent after 2 content events (for 30 s): a committed stream breaks.
    "stall_mid": {"stall_after": 2, "stall": 30},
    # Streams are cut after 2 content events; whole answers after half their body.
    "drop": {"drop_after": 2},
    # Streams pause 6 s after the role chunk with only SSE comments (every 0.3 s): longer than the
    # router's read timeout, but the vendor is not silent, and the stream completes.
    "comments": {"content_delay": 6, "comment_every": 0.3},
    # HTTP 200 whose body is an error object, to whole and stream requests alike.
    "error200": {"error_in_200": {"message": "The model is overloaded.", "type": "server_error", "code": 503}},
    # Streams end with an error event after 2 content events.
    "error_event": {"error_event_after": 2},
}
# A phase of each fault, a healthy phase after each.
FLAP_CYCLE = (
    "http500",
    "healthy",
    "stall",
    "healthy",
    "drop",
    "healthy",
    "comments",
    "healthy",
    "error200",
    "healthy",
    "stall_mid",
    "healthy",
    "error_event",
    "healthy",
)
# Modes in which a stream already committed to the vendor breaks: the only unavoidable errors.
BREAKS_STREAMS = frozenset({"stall_mid", "drop", "error_event"})

# The operator events, one per ``--event-every`` seconds, in this order, round and round.
EVENTS = ("key_revoked", "sighup_broken", "redis_restart", "instance_restart", "sighup_changed")


@dataclass
class Timeline:
    """What happened when: flap phases and events, appended by the threads."""

    phases: list[tuple[float, str]] = field(default_factory=list)  # (since, mode)
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def phase(self, mode: str) -> None:
        with self.lock:
            self.phases.append((time.time(), mode))

    def event(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(record)

    def modes_between(self, start: float, end: float) -> set[str]:
        """The flapping vendor's modes at any moment from ``start`` to ``end``."""
        modes = set()
        with self.lock:
            phases = list(self.phases)
        for i, (since, mode) in enumerate(phases):
            until = phases[i + 1][0] if i + 1 < len(phases) else float("inf")
            if since <= end and until >= start:
                modes.add(mode)
        return modes


class Flapper(threading.Thread):
    """Switches the flapping vendor's mode every ``seconds`` until ``until`` (time.time())."""

    def __init__(self, fake_base: str, seconds: float, until: float, timeline: Timeline) -> None:
        super().__init__(name="flapper", daemon=True)
        self.url = f"{fake_base}/_control/vendors/{FLAKY}"
        self.seconds = seconds
        self.until = until
        self.timeline = timeline
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def set_mode(self, mode: str) -> None:
        requests.put(self.url, json={**STEADY_BEHAVIOUR, **MODES[mode]}, timeout=5).raise_for_status()
        self.timeline.phase(mode)

    def run(self) -> None:
        try:
            start = time.time()
            for number in range(100_000):
                mode = FLAP_CYCLE[number % len(FLAP_CYCLE)]
                due = start + number * self.seconds
                if due >= self.until or self.stopping.wait(max(due - time.time(), 0)):
                    break
                self.set_mode(mode)
            self.set_mode("healthy")
        except BaseException as exc:  # reported by the run, which then fails
            self.error = exc


class Events(threading.Thread):
    """One operator event every ``every`` seconds (the first after ``every``), while before ``until``."""

    def __init__(self, cluster: Cluster, every: float, until: float, timeline: Timeline) -> None:
        super().__init__(name="events", daemon=True)
        self.cluster = cluster
        self.every = every
        self.until = until
        self.timeline = timeline
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.variant = 0
        self.revoked = 0
        self.restarted = 0

    def run(self) -> None:
        try:
            start = time.time()
            for number in range(1, 1000):
                due = start + number * self.every
                if due >= self.until or self.stopping.wait(max(due - time.time(), 0)):
                    break
                kind = EVENTS[(number - 1) % len(EVENTS)]
                began = time.time()
                detail = getattr(self, kind)()
                self.timeline.event({"kind": kind, "start": began, "end": time.time(), "detail": detail})
        except BaseException as exc:
            self.error = exc

    # ---- the events; each returns what it did, for the report

    def key_revoked(self) -> str:
        """One of alpha's two keys is revoked at the vendor (the other, revoked before, comes back)."""
        keys = VENDOR_KEYS[REVOCABLE]
        revoked = keys[self.revoked % len(keys)]
        self.revoked += 1
        self.cluster.fake.behave(REVOCABLE, **STEADY_BEHAVIOUR, revoked_keys=[revoked])
        return f"{REVOCABLE} key #{keys.index(revoked) + 1} of {len(keys)} answers 401 from now on"

    def sighup_broken(self) -> str:
        """models.json is replaced by a broken file, both instances get SIGHUP; fixed 5 s later."""
        good = self.cluster.models_file.read_text()
        before = self._workers()
        self.cluster.write_models(good[: len(good) // 2])  # cut in half: not JSON
        self.cluster.sighup_all()
        time.sleep(5)
        self.cluster.write_models(good)
        kept = "kept their workers" if self._workers() == before else "**replaced workers**"
        return f"models.json cut in half, SIGHUP to both; the good file back 5 s later (no SIGHUP); both {kept}"

    def sighup_changed(self) -> str:
        """models.json with other weights, SIGHUP to both instances (new workers)."""
        self.variant += 1
        before = self._workers()
        began = time.monotonic()
        self.cluster.write_models(models(self.variant))
        self.cluster.sighup_all()
        weights = {m["model"]: m.get("weight", 1) for m in models(self.variant) if m.get("type") != "embedding"}
        replaced = self._wait_replaced(before, timeout=30)
        took = f"new workers in both in {time.monotonic() - began:.1f} s" if replaced else "**workers not replaced**"
        return f"weights now {json.dumps(weights)}, SIGHUP to both; {took}"

    def _workers(self) -> dict[str, set[int]]:
        return {i.name: set(worker_pids(i.master_pid)) if i.master_pid else set() for i in self.cluster.instances}

    def _wait_replaced(self, before: dict[str, set[int]], timeout: float) -> bool:
        """Whether every instance has 2 workers, none of them one of ``before``, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._workers()
            if all(len(now[name]) == 2 and not now[name] & before[name] for name in now):
                return True
            time.sleep(0.5)
        return False

    def redis_restart(self) -> str:
        self.cluster.restart_redis(down_seconds=3)
        return "redis-server killed (SIGKILL), down 3 s, started again on its port (empty)"

    def instance_restart(self) -> str:
        """One instance (a, then b, ...) drains on SIGTERM and is started again on its port."""
        instance = self.cluster.instances[self.restarted % len(self.cluster.instances)]
        self.restarted += 1
        drained, code = instance.drain(timeout=60)
        began = time.monotonic()
        instance.start()
        return (
            f"instance {instance.name}: SIGTERM, drained in {drained:.1f} s (exit {code}), "
            f"serving again {time.monotonic() - began:.1f} s later"
        )
