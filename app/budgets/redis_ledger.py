"""Budgets counted in Redis: one count shared by every worker and instance pointed at it.

Each reservation is one Lua script (the check and the charge in one atomic step); each settlement
another, whose reply is awaited before the answer is returned, so the client's next call, wherever
it goes, finds it counted. A reservation whose reply never came is given back in the background
once Redis answers again (its charges were kept in a hold key).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.socket
import hiredis
import redis

from app.budgets.ledger import PREFIX, Grant, Line
from app.budgets.limits import BudgetStorageDown
from app.redact import register_secrets, without_password
from app.wire import read_first

__all__ = ["RedisLedger"]

log = logging.getLogger(__name__)

# After Redis failed, calls are refused at once for this long before it is tried again: a dead
# Redis then costs one call a timeout now and then, not every call.
_RETRY_STORAGE_SECONDS = 2.0
# Seconds Redis gets to connect or answer: a dead Redis costs a call about a second at most, never
# a long hang.
_REDIS_TIMEOUT = 0.5
# Bytes asked of the socket per read: a reply is ~100 bytes, so one read takes it whole.
_READ_SIZE = 65536
# A reservation whose reply never came (a timeout, a reply cut off) may have been charged: it is
# given back in the background, tried every _RELEASE_EVERY s until Redis answers. Its hold lives
# _HOLD_MS from when Redis ran it, so the release finds it (or the reservation, arriving late, the
# release's mark). At most _UNRELEASED_KEPT wait at once (a few seconds of calls at most: a call
# waits for a timeout, and a down Redis refuses the others at once).
_RELEASE_EVERY = 1.0
_UNRELEASED_KEPT = 10_000
_HOLD_MS = 120_000
# What a command may raise: Redis unreachable or failing (RedisError), or the socket (OSError).
_ERRORS = (redis.exceptions.RedisError, OSError)
# What a reused connection that Redis closed meanwhile (a restart) fails with when sent or read
# before any byte of the reply: the command is sent again on a new connection, as redis-py does.
# Redis closes its connections when it stops, before it would run a command sent after; a close
# right after running one (CLIENT KILL, a proxy) would charge it twice, a rare cost accepted so
# that a restart refuses no call. A timeout is not one of these, nor a reply cut off (ReplyCutOff).
_CLOSED = (redis.exceptions.ConnectionError, ConnectionResetError, BrokenPipeError)

# KEYS: the reservation's hold, then one counter per line. ARGV: wanted, minimum, the hold's
# lifetime (ms), then per line: limit, fixed, per_token, expires_at_ms. The rule of ledger._decide,
# then the charges, in one atomic step. The grant and the charges are also kept in the hold: the
# same reservation sent again (on a new connection, after its first one closed) gets the same
# grant and charges nothing more, and one whose reply never came can be given back
# (_RELEASE_SCRIPT); one that arrives after its release charges nothing. Numbers return as
# strings: Redis would truncate a Lua number to an integer.
_RESERVE_SCRIPT = """
local held = redis.call('GET', KEYS[1])
local spent = {}
if held then
  if held == 'released' then
    return {-2, {}, {}}
  end
  for i = 1, #KEYS - 1 do
    spent[i] = redis.call('GET', KEYS[i + 1]) or '0'
  end
  return {tonumber(string.match(held, '^%S+')), {}, spent}
end
local wanted, minimum = tonumber(ARGV[1]), tonumber(ARGV[2])
local granted, refused = wanted, {}
for i = 1, #KEYS - 1 do
  local base = 3 + (i - 1) * 4
  local limit, fixed, per = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local used = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
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
local hold = {string.format('%d', granted)}
for i = 1, #KEYS - 1 do
  local base = 3 + (i - 1) * 4
  local charge = string.format('%.17g', tonumber(ARGV[base + 2]) + granted * tonumber(ARGV[base + 3]))
  hold[i + 1] = charge
  spent[i] = redis.call('INCRBYFLOAT', KEYS[i + 1], charge)
  redis.call('PEXPIREAT', KEYS[i + 1], ARGV[base + 4])
end
redis.call('SET', KEYS[1], table.concat(hold, ' '), 'PX', ARGV[3])
return {granted, {}, spent}
"""

# KEYS: a hold, then its counters; ARGV: the hold's lifetime (ms). Takes back the hold's charges
# from the counters that still exist, if it has any, and leaves the hold marked released, so the
# reservation, should it arrive only now, charges nothing. 1 if charges were taken back.
_RELEASE_SCRIPT = """
local held = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'released', 'PX', ARGV[1])
if not held or held == 'released' then
  return 0
end
local i = 1
for field in string.gmatch(held, '%S+') do
  if i > 1 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[i], '-' .. field)
  end
  i = i + 1
end
return 1
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


class RedisSilent(TimeoutError):
    """Redis did not answer within the ledger's timeout."""


class ReplyCutOff(redis.exceptions.RedisError):
    """The connection ended in the middle of a reply: the command ran, so it is never sent again."""


class _Link:
    """One of the ledger's Redis connections.

    redis-py opens it (address, TLS, AUTH, SELECT, timeouts: whatever the URL says); commands
    then go straight to its socket, packed and parsed by hiredis: redis-py's per-command path
    (its client's dispatch, pool locks and health checks, then the connection's own layers) cost
    more CPU than the round trip itself. Under gevent, a plain TCP or Unix socket is read at the C
    level, waiting for a reply with a timer the link keeps (gevent's socket makes a new timeout
    object for every wait: ~7 us a reply).
    """

    __slots__ = ("connection", "hub", "raw", "reader", "socket", "timer")

    def __init__(self, connection: Any) -> None:
        connection.connect()
        self.connection = connection
        self.socket = connection._sock  # redis-py's open socket (private: every Redis ledger test needs it)
        read_first(self.socket)  # a call under way waits for the reply: before new calls start
        self.reader = hiredis.Reader()
        # gevent's socket (not TLS, whose bytes must go through the SSL layer): its C-level socket.
        self.raw = self.socket._sock if type(self.socket) is gevent.socket.socket else None
        if self.raw is not None:
            self.hub = self.socket.hub
            timeout = connection.socket_timeout or _REDIS_TIMEOUT
            self.timer = self.hub.loop.timer(timeout, timeout)  # restarted by again(): see _receive

    def send(self, *command: Any) -> None:
        data = hiredis.pack_command(command)
        sent = self.socket.send(data)  # all of it, nearly always: a command is ~200 bytes
        if sent < len(data):
            self.socket.sendall(data[sent:])

    def read(self) -> Any:
        """The next reply; an error reply raises redis-py's exception for it."""
        reader = self.reader
        begun = False  # a byte of the reply arrived: Redis ran the command
        while True:
            reply = reader.gets()
            if reply is False:  # not all of it read yet
                try:
                    data = self._receive()
                except OSError as exc:
                    if begun:
                        raise ReplyCutOff("Redis's reply was cut off") from exc
                    raise
                if not data:
                    if begun:
                        raise ReplyCutOff("Redis closed the connection in the middle of a reply")
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                reader.feed(data)
                begun = True
            elif not isinstance(reply, hiredis.PushNotification):  # a push (RESP3 only) answers nothing
                break
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            error = redis.exceptions.NoScriptError if message.startswith("NOSCRIPT") else redis.exceptions.ResponseError
            raise error(message)
        return reply

    def _receive(self) -> bytes:
        raw = self.raw
        if raw is None:
            return self.socket.recv(_READ_SIZE)  # within the socket's own timeout
        while True:
            try:
                return raw.recv(_READ_SIZE)
            except BlockingIOError:
                pass
            # Nothing yet: wait for the socket, thrown out by the timer if Redis stays silent.
            # again(), not start(): libev's stop keeps what is left of a timer, so each start after
            # a stop would wait less, and after a few thousand replies not at all.
            self.timer.again(gevent.getcurrent().throw, RedisSilent, update=True)
            try:
                self.hub.wait(self.socket._read_event)
            finally:
                self.timer.stop()


class RedisLedger:
    """Counts in Redis, shared by every worker and instance pointed at it.

    Fails closed: while Redis does not answer, every call under a budget is refused with 503
    (``BudgetStorageDown``): an operator who set a budget pays the bill, and spending without a
    counter is what a budget exists to prevent. One error line per outage, one warning when it
    answers again.
    """

    def __init__(self, url: str) -> None:
        password = urlsplit(url).password
        if password:
            register_secrets([password])
        self.where = without_password(url)
        # A Redis that does not answer within the timeout is down, not waited for. RESP2: with
        # RESP3 (redis-py's default) Redis may push messages between replies.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT, protocol=2
        )
        self._idle: list[_Link] = []  # connections no greenlet holds, most recently used last
        self._down_since: float | None = None
        # Each reservation's hold: this ledger's own prefix (unique among workers and instances),
        # then a count.
        self._holds = f"{PREFIX}:hold:{uuid.uuid4().hex}:"
        self._count = itertools.count()
        self._unreleased: dict[tuple[str, ...], None] = {}  # holds (and their counters) to give back, in order
        self._releasing = False  # the greenlet that releases them runs

    def reserve(self, lines: Sequence[Line], wanted: int, minimum: int) -> Grant:
        keys = [f"{self._holds}{next(self._count)}"]
        keys += [line.key for line in lines]
        args: list[Any] = [wanted, minimum, _HOLD_MS]
        for line in lines:  # hiredis writes a float as repr() does: the shortest exact decimal
            args += (line.limit, line.fixed, line.per_token, int(line.expires_at * 1000))
        sent: list[bool] = []
        try:
            return self._call(self._on_link, self._reserve, keys, args, sent)
        except BudgetStorageDown:
            if sent:  # Redis got it and may have run it: whoever asked was refused, so give it back
                self._release_later(keys)
            raise

    def _release_later(self, keys: list[str]) -> None:
        if len(self._unreleased) >= _UNRELEASED_KEPT:
            log.error("budget storage %s: too many unanswered reservations; one may stay charged", self.where)
            return
        self._unreleased[tuple(keys)] = None
        if not self._releasing:
            self._releasing = True
            threading.Thread(target=self._release_all, name="budget-release", daemon=True).start()

    def _release_all(self) -> None:
        """Give back what unanswered reservations may have charged, once Redis answers again: one
        greenlet per ledger, trying every _RELEASE_EVERY s, one release at a time, for as long as
        Redis does not answer (a reservation it holds still runs when it wakes up)."""
        while True:
            try:
                while self._unreleased:
                    time.sleep(_RELEASE_EVERY)
                    released = 0
                    for keys in list(self._unreleased):
                        try:
                            released += self._on_link(self._run_release, keys)
                        except _ERRORS:
                            break  # still not answering: the rest wait for the next round
                        self._unreleased.pop(keys, None)
                    if released:
                        log.warning(
                            "budget storage %s: %d reservation(s) it answered too late given back", self.where, released
                        )
            finally:
                self._releasing = False
            if not self._unreleased or self._releasing:
                return
            self._releasing = True  # one came in as this greenlet was ending: it goes on

    def adjust(self, lines: Sequence[Line], deltas: Sequence[float]) -> tuple[float, ...]:
        keys = [line.key for line in lines]
        args: list[Any] = []
        for line, delta in zip(lines, deltas, strict=True):
            args += (float(delta), int(line.expires_at * 1000))
        return self._call(self._on_link, self._adjust, keys, args)

    def _on_link(self, action: Callable[..., Any], *args: Any) -> Any:
        """``action(link, *args)`` on an idle connection of the ledger's (a new one when none is idle).

        A connection is taken out of ``_idle`` while a greenlet uses it, so no two share one. A
        reused connection that Redis closed (a restart) fails when read; the action then runs once
        more on a new connection, as redis-py's own client does. Not after a timeout: a slow
        Redis may still run the command, and running it twice would charge twice."""
        link = self._idle.pop() if self._idle else None
        while True:
            reused = link is not None
            try:
                if link is None:
                    pool = self._redis.connection_pool
                    link = _Link(pool.connection_class(**pool.connection_kwargs))
                result = action(link, *args)
            except redis.exceptions.ResponseError:
                self._idle.append(link)  # an error reply: the connection is in step and stays usable
                raise
            except BaseException as exc:
                # Anything else (a timeout, a reply of the wrong shape, the greenlet interrupted)
                # may leave a reply unread: the connection is never used again.
                if link is not None:
                    link.connection.disconnect()
                if reused and isinstance(exc, _CLOSED):
                    link = None
                    continue
                raise
            self._idle.append(link)
            return result

    @staticmethod
    def _reserve(link: _Link, keys: list[str], args: list[Any], sent: list[bool]) -> Grant:
        """The reservation script, by its digest (EVALSHA); loaded first if Redis does not know it
        (a restart). ``sent`` gets an entry once the script has gone to Redis."""
        link.send("EVALSHA", _RESERVE_DIGEST, len(keys), *keys, *args)
        sent.append(True)
        try:
            reply = link.read()
        except _CLOSED:
            sent.clear()  # closed before any byte of a reply: Redis did not run it (see _CLOSED)
            raise
        except redis.exceptions.NoScriptError:
            link.send("SCRIPT", "LOAD", _RESERVE_SCRIPT)
            link.read()
            link.send("EVALSHA", _RESERVE_DIGEST, len(keys), *keys, *args)
            reply = link.read()
        try:
            granted, refused, spent = reply
            values = tuple(float(value) for value in spent)
            if granted < 0:
                if not refused:  # refused without saying which line (or found released): not for us
                    raise ValueError("no line refused")
                return Grant(None, values, tuple(int(index) for index in refused))
            return Grant(int(granted), values)
        except (TypeError, ValueError) as exc:
            raise redis.exceptions.InvalidResponse(f"unexpected reply to a reservation: {reply!r}") from exc

    @staticmethod
    def _run_release(link: _Link, keys: tuple[str, ...]) -> int:
        link.send("EVAL", _RELEASE_SCRIPT, len(keys), *keys, _HOLD_MS)
        return 1 if link.read() == 1 else 0

    @staticmethod
    def _adjust(link: _Link, keys: list[str], args: list[Any]) -> tuple[float, ...]:
        """The settlement script, sent with its text (EVAL): it is short, and never unknown."""
        link.send("EVAL", _ADJUST_SCRIPT, len(keys), *keys, *args)
        reply = link.read()
        try:
            return tuple(float(value) for value in reply)
        except (TypeError, ValueError) as exc:
            raise redis.exceptions.InvalidResponse(f"unexpected reply to a settlement: {reply!r}") from exc

    def spent(self, keys: Sequence[str]) -> tuple[float, ...]:
        values = self._call(self._redis.mget, keys)
        return tuple(float(value) if value is not None else 0.0 for value in values)

    def _call(self, action: Callable[..., Any], *args: Any) -> Any:
        down_since = self._down_since
        if down_since is not None and time.monotonic() - down_since < _RETRY_STORAGE_SECONDS:
            raise self._down()
        try:
            result = action(*args)
        except _ERRORS as exc:
            if self._down_since is None:  # not down_since: calls failing together log once
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
