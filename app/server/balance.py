"""Connections spread evenly over the gunicorn workers.

Every worker waits on the same listening socket, and keep-alive connections stay with the worker
that accepted them for as long as the client keeps them (a load generator's or nginx's upstream
pool: the whole run). gevent workers accept greedily, so whichever woke first takes most of a burst
of new connections: measured, one of two workers held 12 of 16 connections for a whole run, and
as a worker is one process on one core, its requests waited about three times as long as the
other's. So each worker publishes how many connections it holds in memory shared with its
siblings (an anonymous mapping made by the master before it forks), and:

- it accepts while it holds fewer than its share of the connections held and waiting in the
  listening socket's queue, or no more than the least loaded sibling (``accept_delay``): a
  burst of new connections is split evenly, a single new one goes to the least loaded.
  Otherwise it stops accepting for a few milliseconds, and accepts anyway once it has deferred
  for ``BALANCE_ACCEPT_WAIT`` seconds, so a sibling that cannot accept (blocked, or just
  starting) delays a connection by that much at most;
- it closes a keep-alive connection after its current answer (``Connection: close``) when it
  holds more than one connection above the least loaded sibling (``should_shed``), at most one
  every ``_SHED_INTERVAL`` seconds so the shed connections land before the next is judged; the
  client reconnects, and the accept rule puts the new connection on the sibling. Not while a
  burst is being accepted (the counts are still moving), nor for a while after a sibling let a
  connection wait past ``BALANCE_ACCEPT_WAIT`` (it is not accepting: what is closed for it would
  come back).

A slot holds -1 while its worker does not accept (booting, stopping, dead), so only serving
workers are compared. ``BALANCE_CONNECTIONS=0`` switches both rules off.

Imported by gunicorn.conf.py in the master: no Flask, no gevent here.
"""

from __future__ import annotations

import mmap
import time

__all__ = ["Balance", "assign_slot", "create_table", "release_slot"]

# Slots for workers alive at once (during a reload old and new workers overlap); a worker started
# when every slot is taken simply does not balance.
_SLOTS = 64
_IDLE = -1
# Seconds a deferring worker waits before it looks at the listening socket again.
_DEFER_STEP = 0.002
# A deferral later than this after the previous one starts a new wait (another connection).
_EPISODE_GAP = 0.25
# Seconds between two keep-alive connections closed to rebalance.
_SHED_INTERVAL = 0.05
# No connection is closed to rebalance this soon after this worker accepted one: during a burst
# of new connections the counts are still moving (a sibling may not have taken its share yet).
_SETTLE_SECONDS = 0.1
# Nor for this long after a sibling left a connection waiting past BALANCE_ACCEPT_WAIT: it is not
# accepting (blocked, stopped, busy for longer), and a connection closed for it would come back.
_SIBLING_SLOW_SECONDS = 1.0

_table: memoryview | None = None


def create_table() -> None:
    """In the master, before the first fork: the shared counts, every slot idle."""
    global _table
    if _table is None:
        _table = memoryview(mmap.mmap(-1, _SLOTS * 8)).cast("q")  # anonymous mappings are shared with children
        for index in range(_SLOTS):
            _table[index] = _IDLE


def assign_slot(workers) -> int | None:
    """In the master, for a worker about to fork: a slot no living worker holds (None: none left)."""
    if _table is None:
        return None
    taken = {getattr(worker, "balance_slot", None) for worker in workers}
    for index in range(_SLOTS):
        if index not in taken:
            _table[index] = _IDLE
            return index
    return None


def release_slot(worker) -> None:
    """In the master, when a worker has exited: its slot no longer counts."""
    index = getattr(worker, "balance_slot", None)
    if _table is not None and index is not None:
        _table[index] = _IDLE


class Balance:
    """One worker's side: its count of open connections, and the two rules."""

    def __init__(self, slot: int | None, accept_wait: float) -> None:
        self._slot = slot if _table is not None else None
        self._accept_wait = accept_wait
        self._open = 0
        self._serving = False
        self._deferring_since: float | None = None
        self._last_deferral = 0.0
        self._last_accept = 0.0
        self._quiet_until = 0.0
        self._next_look = 0.0

    def serving(self, on: bool) -> None:
        """The worker starts (True) or stops (False) accepting connections."""
        self._serving = on
        self._publish()

    def opened(self) -> None:
        self._open += 1
        self._last_accept = time.monotonic()
        self._publish()

    def closed(self) -> None:
        self._open -= 1
        self._publish()

    def _publish(self) -> None:
        if self._slot is not None and _table is not None:
            _table[self._slot] = self._open if self._serving else _IDLE

    def _siblings(self) -> list[int]:
        """The connection counts of the serving sibling workers."""
        if self._slot is None or _table is None:
            return []
        counts = _table.tolist()
        counts[self._slot] = _IDLE
        return [count for count in counts if count >= 0]

    def accept_delay(self, waiting: int) -> float:
        """0: accept a connection now; else seconds to leave it to a sibling first.

        ``waiting``: connections in the listening socket's queue. This worker takes one while it
        holds fewer than its share of all connections (held and waiting), or no more than the
        least loaded sibling: a burst of new connections is split in one wake of each worker,
        and a single new one goes to the least loaded.
        """
        siblings = self._siblings()
        if not siblings:
            return 0.0
        share = (self._open + sum(siblings) + waiting) / (len(siblings) + 1)
        if self._open < share or self._open <= min(siblings):
            self._deferring_since = None
            return 0.0
        now = time.monotonic()
        if self._deferring_since is None or now - self._last_deferral > _EPISODE_GAP:
            self._deferring_since = now
        self._last_deferral = now
        if now - self._deferring_since >= self._accept_wait:
            self._deferring_since = None  # the siblings did not take it in time: take it
            self._quiet_until = now + _SIBLING_SLOW_SECONDS
            return 0.0
        return _DEFER_STEP

    def should_shed(self) -> bool:
        """Whether to close this keep-alive connection after its answer, for a less loaded sibling."""
        if self._open < 2:
            return False
        # The shared table is read at most once per _SHED_INTERVAL, not on every request.
        now = time.monotonic()
        if now < self._next_look or now - self._last_accept < _SETTLE_SECONDS or now < self._quiet_until:
            return False
        self._next_look = now + _SHED_INTERVAL
        siblings = self._siblings()
        return bool(siblings) and self._open > min(siblings) + 1
