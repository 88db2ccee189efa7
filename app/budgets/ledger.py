"""The ledger: where spend is counted, in memory (per worker) or in Redis (shared), with an
atomic reserve (a Lua script in Redis; one stretch of code without a greenlet switch in memory)."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
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

    def adjust(
        self, lines: Sequence[Line], deltas: Sequence[float], then: Callable[[tuple[float, ...]], None] | None = None
    ) -> None:
        """Add ``deltas`` (may be negative) to the lines; ``then`` gets their spend afterwards, once
        known (at once in memory; in Redis when its reply is read, maybe by a later command)."""

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
        return Grant(grant.tokens, self._add(lines, charges))

    def adjust(
        self, lines: Sequence[Line], deltas: Sequence[float], then: Callable[[tuple[float, ...]], None] | None = None
    ) -> None:
        after = self._add(lines, deltas)
        if then is not None:
            then(after)

    def _add(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
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

_RESERVE_DIGEST = hashlib.sha1(_RESERVE_SCRIPT.encode(), usedforsecurity=False).hexdigest()

# A connection unused this long may have been closed by Redis meanwhile (a restart): a settlement
# sent on it waits for its reply, so that a dead connection is found while the settlement can still
# be sent again on a new one.
_FRESH_SECONDS = 1.0
# Settlements whose replies may wait unread on one connection; beyond, they are read at once.
_UNREAD_MAX = 32


class _Link:
    """One of the ledger's Redis connections, and what its unread replies are for: settlements
    sent on it, each with what to do with the spend Redis answers."""

    __slots__ = ("connection", "unread", "used_at")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.unread: deque[Callable[[tuple[float, ...]], None] | None] = deque()
        self.used_at = time.monotonic()


class RedisLedger:
    """Counts in Redis, shared by every worker and instance pointed at it.

    Fails closed: while Redis does not answer, every call under a budget is refused with 503
    (``BudgetStorageDown``): an operator who set a budget pays the bill, and spending without a
    counter is what a budget exists to prevent. One error line per outage, one warning when it
    answers again.

    Every budgeted call sends two scripts: a reservation, whose reply the call waits for, and a
    settlement, whose reply it does not: the settlement is written to Redis before the answer
    is returned (Redis applies what reaches it in order, so the client's next call, wherever it
    goes, finds it counted), and its reply is read with the next command on that connection.
    Waiting costs a worker a turn of its event loop per command; a call then waits once.
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
        self._refused = redis.exceptions.ResponseError
        self._connection_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._idle: list[_Link] = []  # connections not in use by a greenlet, most recently used last
        self._down_since: float | None = None

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        keys = [line.key for line in lines]
        args: list[Any] = [wanted, minimum]
        for line in lines:
            args += [repr(line.limit), repr(line.fixed), repr(line.per_token), int(line.expires_at * 1000)]
        granted, refused, spent = self._call(lambda: self._on_link(lambda link: self._ask(link, keys, args)))
        values = tuple(float(value) for value in spent)
        if granted < 0:
            return Grant(None, values, tuple(int(index) for index in refused))
        return Grant(int(granted), values)

    def adjust(
        self, lines: Sequence[Line], deltas: Sequence[float], then: Callable[[tuple[float, ...]], None] | None = None
    ) -> None:
        keys = [line.key for line in lines]
        args: list[Any] = []
        for line, delta in zip(lines, deltas, strict=True):
            args += [repr(float(delta)), int(line.expires_at * 1000)]
        self._call(lambda: self._on_link(lambda link: self._tell(link, keys, args, then)))

    def _on_link(self, action: Callable[[_Link], Any]) -> Any:
        """``action`` on an idle connection of the ledger's (a new one when none is idle).

        Between taking a connection and putting it back a greenlet waits for nothing else, so no
        two greenlets ever share one. A reused connection that fails (Redis closed it: a restart)
        is dropped and the action runs once more on a new connection, as redis-py's own client
        does; a new connection that fails means Redis is down."""
        link = self._idle.pop() if self._idle else None
        while True:
            reused = link is not None
            if link is None:
                pool = self._redis.connection_pool
                link = _Link(pool.connection_class(**pool.connection_kwargs))  # connects on first use
            try:
                result = action(link)
            except self._refused:
                self._idle.append(link)  # an error reply: the connection is in step and stays usable
                raise
            except self._connection_errors:
                self._drop(link)
                if not reused:
                    raise
                link = None
                continue
            link.used_at = time.monotonic()
            self._idle.append(link)
            return result

    def _ask(self, link: _Link, keys: list[str], args: list[Any]) -> Any:
        """The reservation script's reply, by its digest (EVALSHA); loaded first if Redis does not
        know it (a restart). Replies still unread on the connection come first."""
        self._send(link, "EVALSHA", _RESERVE_DIGEST, len(keys), *keys, *args)
        self._read_unread(link)
        try:
            return link.connection.read_response()
        except self._no_script:
            self._send(link, "SCRIPT", "LOAD", _RESERVE_SCRIPT)
            link.connection.read_response()
            self._send(link, "EVALSHA", _RESERVE_DIGEST, len(keys), *keys, *args)
            return link.connection.read_response()

    def _tell(
        self, link: _Link, keys: list[str], args: list[Any], then: Callable[[tuple[float, ...]], None] | None
    ) -> None:
        """Send a settlement and leave its reply unread, unless the connection sat unused long
        enough to be dead, or holds many unread replies already. Sent with its text (EVAL), not its
        digest: a reply read later can no longer lead to loading the script and sending it again."""
        self._send(link, "EVAL", _ADJUST_SCRIPT, len(keys), *keys, *args)
        if time.monotonic() - link.used_at < _FRESH_SECONDS and len(link.unread) < _UNREAD_MAX:
            link.unread.append(then)
            return
        self._read_unread(link)
        self._settled(link.connection.read_response(), then)

    def _read_unread(self, link: _Link) -> None:
        while link.unread:
            try:
                reply = link.connection.read_response()
            except self._refused as exc:  # an error reply: Redis refused that settlement
                link.unread.popleft()
                log.error("budget storage %s refused a settlement (%s): its reservation stays charged", self.where, exc)
                continue
            self._settled(reply, link.unread.popleft())

    @staticmethod
    def _settled(reply: Any, then: Callable[[tuple[float, ...]], None] | None) -> None:
        if then is None:
            return
        try:
            then(tuple(float(value) for value in reply))
        except Exception:
            log.exception("reporting a budget's spend failed")

    def _drop(self, link: _Link) -> None:
        link.connection.disconnect()  # a connection that failed mid-command is never used again
        if link.unread:
            log.warning(
                "%d budget settlement(s) sent to %s just before its connection broke may not be counted: "
                "their reservations then stay charged",
                len(link.unread),
                self.where,
            )

    @staticmethod
    def _send(link: _Link, *command: Any) -> None:
        # Without the client's per-command dispatch, pool locks and health checks: ~60 us less a command.
        connection = link.connection
        connection.send_packed_command(connection.pack_command(*command), check_health=False)

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
