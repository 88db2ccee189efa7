"""The ledger: where spend is counted, in memory (per worker) or in Redis (shared), with an
atomic reserve (a Lua script in Redis; one stretch of code without a greenlet switch in memory)."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from app.budgets.limits import BudgetStorageDown

__all__ = ["KEEP_AFTER_WINDOW", "PREFIX", "Grant", "Ledger", "Line", "MemoryLedger", "RedisLedger", "open_ledger"]

log = logging.getLogger(__name__)

# Every router key in Redis starts with this, apart from other users of the same Redis.
PREFIX = "generative-api-router:budget"
# A window's counter outlives the window this long, so a late settlement still finds it.
KEEP_AFTER_WINDOW = 86400.0
# After Redis failed, calls are refused at once for this long before it is tried again: a dead
# Redis then costs one call a timeout now and then, not every call.
_RETRY_STORAGE_SECONDS = 2.0
# Seconds Redis gets to connect or answer: a dead Redis costs a call about a second at most, never
# a long hang.
_REDIS_TIMEOUT = 0.5


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
    """The reservation rule both storages apply (the Lua script below is the same, line for line)."""
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


# KEYS: one counter per line. ARGV: wanted, minimum, then per line: limit, fixed, per_token,
# expires_at_ms. The rule of _decide, then the charges, in one atomic step. Numbers return as
# strings: Redis would truncate a Lua number to an integer.
_RESERVE_SCRIPT = """
local wanted, minimum = tonumber(ARGV[1]), tonumber(ARGV[2])
local granted, refused, spent = wanted, {}, {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local limit, fixed, per = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  spent[i] = tostring(used)
  local left = limit - used
  if left <= 0 or left < fixed + minimum * per then
    refused[#refused + 1] = i - 1
  elseif per > 0 then
    local fit = math.floor((left - fixed) / per)
    if fit < granted then granted = fit end
  end
end
if #refused > 0 then
  return {-1, refused, spent}
end
if granted < 0 then granted = 0 end
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local charge = tonumber(ARGV[base + 2]) + granted * tonumber(ARGV[base + 3])
  spent[i] = redis.call('INCRBYFLOAT', KEYS[i], string.format('%.17g', charge))
  redis.call('PEXPIREAT', KEYS[i], ARGV[base + 4])
end
return {granted, {}, spent}
"""

# KEYS: counters; ARGV: per key a delta and expires_at_ms. Their values afterwards.
_ADJUST_SCRIPT = """
local after = {}
for i = 1, #KEYS do
  after[i] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i])
end
return after
"""

_SCRIPTS = {"reserve": _RESERVE_SCRIPT, "adjust": _ADJUST_SCRIPT}


def _digest(script: str) -> str:
    """The name Redis knows a loaded script by (EVALSHA)."""
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class RedisLedger:
    """Counts in Redis, shared by every worker and instance pointed at it.

    Fails closed: while Redis does not answer, every call under a budget is refused with 503
    (``BudgetStorageDown``): an operator who set a budget pays the bill, and spending without a
    counter is what a budget exists to prevent. One error line per outage, one warning when it
    answers again.
    """

    def __init__(self, url: str) -> None:
        import redis  # only when budgets are counted in Redis: a router without never loads it

        from app.redact import register_secrets, without_password

        password = urlsplit(url).password
        if password:
            register_secrets([password])
        self.where = without_password(url)
        # A Redis that does not answer within the timeout is down, not waited for.
        self._redis = redis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT)
        self._errors = (redis.exceptions.RedisError, OSError)
        self._no_script = redis.exceptions.NoScriptError
        self._connection_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._idle: list[Any] = []  # connections not in use by a greenlet, newest last
        self._scripts = {name: (script, _digest(script)) for name, script in _SCRIPTS.items()}
        self._down_since: float | None = None

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        args: list[Any] = [wanted, minimum]
        for line in lines:
            args += [repr(line.limit), repr(line.fixed), repr(line.per_token), int(line.expires_at * 1000)]
        granted, refused, spent = self._call(lambda: self._run("reserve", [line.key for line in lines], args))
        values = tuple(float(value) for value in spent)
        if granted < 0:
            return Grant(None, values, tuple(int(index) for index in refused))
        return Grant(int(granted), values)

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        args: list[Any] = []
        for line, delta in zip(lines, deltas, strict=True):
            args += [repr(float(delta)), int(line.expires_at * 1000)]
        after = self._call(lambda: self._run("adjust", [line.key for line in lines], args))
        return tuple(float(value) for value in after)

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script by its digest (EVALSHA), loaded first if Redis does not know it (a restart).

        Every budgeted call runs two scripts (reserve, settle), so this is the budget's hot path.
        Through ``Redis.evalsha`` each costs ~150 us of CPU (the client's command dispatch, its
        pool's locks and health checks, instrumentation); on a redis-py connection of our own it
        costs ~40-60 us, the rest being the round trip itself. A connection is taken from
        ``_idle`` and put back after its reply: between those a greenlet waits for nothing else,
        so no two greenlets ever share one connection. An idle connection Redis closed meanwhile
        (a restart) fails at once; the command is then sent once more on a new connection, as
        redis-py's own client does."""
        script, digest = self._scripts[name]
        reused = bool(self._idle)
        connection = self._idle.pop() if reused else self._connect()
        while True:
            try:
                try:
                    result = self._command(connection, "EVALSHA", digest, len(keys), *keys, *args)
                except self._no_script:
                    self._command(connection, "SCRIPT", "LOAD", script)
                    result = self._command(connection, "EVALSHA", digest, len(keys), *keys, *args)
            except self._connection_errors:
                connection.disconnect()  # a connection that failed mid-command is never used again
                if not reused:
                    raise
                reused, connection = False, self._connect()
                continue
            self._idle.append(connection)
            return result

    def _connect(self) -> Any:
        pool = self._redis.connection_pool
        return pool.connection_class(**pool.connection_kwargs)  # connects (AUTH, SELECT) on first use

    @staticmethod
    def _command(connection: Any, *command: Any) -> Any:
        connection.send_packed_command(connection.pack_command(*command), check_health=False)
        return connection.read_response()

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        values = self._call(lambda: self._redis.mget(keys))
        return tuple(float(value) if value is not None else 0.0 for value in values)

    def _call(self, action: Callable[[], Any]) -> Any:
        down_since = self._down_since
        if down_since is not None and time.monotonic() - down_since < _RETRY_STORAGE_SECONDS:
            raise self._down()
        try:
            result = action()
        except self._errors as exc:
            if down_since is None:
                log.error(
                    "budget storage %s unreachable (%s): calls of clients with a budget are refused with 503 "
                    "until it answers again (tried again every %g s)",
                    self.where,
                    type(exc).__name__,
                    _RETRY_STORAGE_SECONDS,
                )
            self._down_since = time.monotonic()
            raise self._down() from None
        if down_since is not None:
            self._down_since = None
            log.warning("budget storage %s answers again: budgets are counted there again", self.where)
        return result

    def _down(self) -> BudgetStorageDown:
        wait = math.ceil(_RETRY_STORAGE_SECONDS)
        return BudgetStorageDown(
            "The budget storage is unreachable, so calls under a budget are refused until it answers again.",
            headers={"Retry-After": str(wait)},
        )


def open_ledger(storage: str) -> Ledger:
    """The ledger ``BUDGET_STORAGE`` names: memory:// or a Redis URL."""
    if storage == "memory://":
        return MemoryLedger()
    return RedisLedger(storage)
