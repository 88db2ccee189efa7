"""The ledger: where spend is counted, in memory (per worker) or in Redis (shared, in
app.budgets.redis_ledger), with an atomic reserve (a Lua script in Redis; one stretch of code
without a greenlet switch in memory)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["KEEP_AFTER_WINDOW", "PREFIX", "Grant", "Ledger", "Line", "MemoryLedger", "open_ledger"]

log = logging.getLogger(__name__)

# Every router key in Redis starts with this, apart from other users of the same Redis.
PREFIX = "generative-api-router:budget"
# A window's counter outlives the window this long, so a late settlement still finds it.
KEEP_AFTER_WINDOW = 86400.0


# -- storage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One limit's counter in one window, and what a charge costs on it.

    ``fixed`` is charged whatever is granted; ``per_token`` for each output token granted.
    """

    key: str
    limit: float
    expires_at: float  # Unix seconds
    fixed: float = 0.0
    per_token: float = 0.0


@dataclass(frozen=True)
class Grant:
    """A ledger's answer to a reservation: tokens granted (None: refused, ``refused`` lists which
    lines had no room) and each line's spend afterwards."""

    tokens: int | None
    spent: tuple[float, ...]
    refused: tuple[int, ...] = ()


class Ledger(Protocol):
    """Where spend is counted: one number per limit and window."""

    where: str

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        """Atomically: refuse when a line has not ``fixed + minimum * per_token`` left (or nothing),
        else grant the most output tokens up to ``wanted`` that every line has room for and charge
        each line ``fixed + granted * per_token``."""

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        """Add ``deltas`` (may be negative) to the lines; their spend afterwards."""

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        """What each key has spent (0 when unknown)."""


def _decide(lines: Sequence[Line], spent: Sequence[float], wanted: int, minimum: int) -> Grant:
    """The reservation rule both storages apply (the Redis ledger's Lua script is the same, line for line)."""
    granted = wanted
    refused = []
    for index, (line, used) in enumerate(zip(lines, spent, strict=True)):
        left = line.limit - used
        if left <= 0 or left < line.fixed + minimum * line.per_token:
            refused.append(index)
        elif line.per_token > 0:
            granted = min(granted, math.floor((left - line.fixed) / line.per_token))
    if refused:
        return Grant(None, tuple(spent), tuple(refused))
    return Grant(max(granted, 0), ())


class MemoryLedger:
    """Counts in this worker process: no greenlet switch between a check and its charge."""

    where = "memory://"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._spent: dict[str, float] = {}
        self._expires: dict[str, float] = {}
        self._clock = clock

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        spent = self.spent([line.key for line in lines])
        grant = _decide(lines, spent, wanted, minimum)
        if grant.tokens is None:
            return grant
        charges = [line.fixed + grant.tokens * line.per_token for line in lines]
        return Grant(grant.tokens, self.adjust(lines, charges))

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        after = []
        for line, delta in zip(lines, deltas, strict=True):
            if line.key not in self._spent:
                self._forget_expired()
            value = self._spent[line.key] = self._spent.get(line.key, 0.0) + delta
            self._expires[line.key] = line.expires_at
            after.append(value)
        return tuple(after)

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        return tuple(self._spent.get(key, 0.0) for key in keys)

    def _forget_expired(self) -> None:
        # Run when a new window's counter appears: old windows are never read again.
        now = self._clock()
        for key in [key for key, at in self._expires.items() if at <= now]:
            del self._spent[key], self._expires[key]


def open_ledger(storage: str) -> Ledger:
    """The ledger ``BUDGET_STORAGE`` names: memory:// or a Redis URL."""
    if storage == "memory://":
        return MemoryLedger()
    from app.budgets.redis_ledger import RedisLedger  # only then: a router without never loads redis

    return RedisLedger(storage)
