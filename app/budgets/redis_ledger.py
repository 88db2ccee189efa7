"""Budgets counted in Redis: one count shared by every worker and instance pointed at it.

Each reservation is one Lua script (the check and the charge in one atomic step); each settlement
another, written before the answer is returned and its reply read with the connection's next
command, so a budgeted call waits on Redis once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis

from app.budgets.ledger import Grant, Line
from app.budgets.limits import BudgetStorageDown
from app.redact import register_secrets, without_password

__all__ = ["RedisLedger"]

log = logging.getLogger(__name__)

# After Redis failed, calls are refused at once for this long before it is tried again: a dead
# Redis then costs one call a timeout now and then, not every call.
_RETRY_STORAGE_SECONDS = 2.0
# Seconds Redis gets to connect or answer: a dead Redis costs a call about a second at most, never
# a long hang.
_REDIS_TIMEOUT = 0.5
# What a command may raise: Redis unreachable or failing (RedisError), or the socket (OSError).
_ERRORS = (redis.exceptions.RedisError, OSError)
# What means the connection is unusable (rather than Redis refusing a command).
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# KEYS: one counter per line. ARGV: wanted, minimum, then per line: limit, fixed, per_token,
# expires_at_ms. The rule of ledger._decide, then the charges, in one atomic step. Numbers return as
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
    """One of the ledger's Redis connections, and how many replies to settlements sent on it are
    still unread.

    redis-py opens it (address, TLS, AUTH, SELECT, timeouts: whatever the URL says); commands
    then go straight to its socket, packed and parsed by hiredis: redis-py's per-command path
    (its client's dispatch, pool locks and health checks, then the connection's own layers) cost
    more CPU than the round trip itself.
    """

    __slots__ = ("connection", "reader", "socket", "unread", "used_at")

    def __init__(self, connection: Any) -> None:
        connection.connect()
        self.connection = connection
        self.socket = connection._sock  # redis-py's open socket (private: every Redis ledger test needs it)
        self.reader = hiredis.Reader()
        self.unread = 0
        self.used_at = time.monotonic()

    def send(self, *command: Any) -> None:
        data = hiredis.pack_command(command)
        sent = self.socket.send(data)  # all of it, nearly always: a command is ~200 bytes
        if sent < len(data):
            self.socket.sendall(data[sent:])

    def read(self) -> Any:
        """The next reply; an error reply raises redis-py's exception for it."""
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            data = self.socket.recv(65536)
            if not data:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            error = redis.exceptions.NoScriptError if message.startswith("NOSCRIPT") else redis.exceptions.ResponseError
            raise error(message)
        return reply


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
        password = urlsplit(url).password
        if password:
            register_secrets([password])
        self.where = without_password(url)
        # A Redis that does not answer within the timeout is down, not waited for.
        self._redis = redis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT)
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

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...] | None:
        keys = [line.key for line in lines]
        args: list[Any] = []
        for line, delta in zip(lines, deltas, strict=True):
            args += [repr(float(delta)), int(line.expires_at * 1000)]
        return self._call(lambda: self._on_link(lambda link: self._tell(link, keys, args)))

    def _on_link(self, action: Callable[[_Link], Any]) -> Any:
        """``action`` on an idle connection of the ledger's (a new one when none is idle).

        Between taking a connection and putting it back a greenlet waits for nothing else, so no
        two greenlets ever share one. A reused connection that fails (Redis closed it: a restart)
        is dropped and the action runs once more on a new connection, as redis-py's own client
        does; a new connection that fails means Redis is down."""
        link = self._idle.pop() if self._idle else None
        while True:
            reused = link is not None
            try:
                if link is None:
                    pool = self._redis.connection_pool
                    link = _Link(pool.connection_class(**pool.connection_kwargs))
                result = action(link)
            except redis.exceptions.ResponseError:
                self._idle.append(link)  # an error reply: the connection is in step and stays usable
                raise
            except _CONNECTION_ERRORS:
                if link is not None:
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
        link.send("EVALSHA", _RESERVE_DIGEST, len(keys), *keys, *args)
        self._read_unread(link)
        try:
            return link.read()
        except redis.exceptions.NoScriptError:
            link.send("SCRIPT", "LOAD", _RESERVE_SCRIPT)
            link.read()
            link.send("EVALSHA", _RESERVE_DIGEST, len(keys), *keys, *args)
            return link.read()

    def _tell(self, link: _Link, keys: list[str], args: list[Any]) -> tuple[float, ...] | None:
        """Send a settlement and leave its reply unread (None), unless the connection sat unused
        long enough to be dead, or holds many unread replies already (then the spend afterwards).
        Sent with its text (EVAL), not its digest: a reply read later can no longer lead to
        loading the script and sending it again."""
        link.send("EVAL", _ADJUST_SCRIPT, len(keys), *keys, *args)
        if time.monotonic() - link.used_at < _FRESH_SECONDS and link.unread < _UNREAD_MAX:
            link.unread += 1
            return None
        self._read_unread(link)
        return tuple(float(value) for value in link.read())

    def _read_unread(self, link: _Link) -> None:
        while link.unread:
            try:
                link.read()
            except redis.exceptions.ResponseError as exc:  # an error reply: Redis refused that settlement
                log.error("budget storage %s refused a settlement (%s): its reservation stays charged", self.where, exc)
            link.unread -= 1

    def _drop(self, link: _Link) -> None:
        link.connection.disconnect()  # a connection that failed mid-command is never used again
        if link.unread:
            log.warning(
                "%d budget settlement(s) sent to %s just before its connection broke may not be counted: "
                "their reservations then stay charged",
                link.unread,
                self.where,
            )

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        values = self._call(lambda: self._redis.mget(keys))
        return tuple(float(value) if value is not None else 0.0 for value in values)

    def _call(self, action: Callable[[], Any]) -> Any:
        down_since = self._down_since
        if down_since is not None and time.monotonic() - down_since < _RETRY_STORAGE_SECONDS:
            raise self._down()
        try:
            result = action()
        except _ERRORS as exc:
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
