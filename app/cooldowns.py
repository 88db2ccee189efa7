"""The cooldown book: which combinations are skipped after a failure, and until when.

``memory://`` keeps the book in each worker process. ``redis://...`` shares it: a combination
that any worker of any instance cools down is skipped by all of them within about a second, for
the same remaining time. Requests only ever read and write the worker's own copy; a background
thread (a greenlet under gunicorn's gevent workers) sends this worker's new cooldowns to Redis
and learns everyone else's, so a slow or dead Redis never delays a request. Deadlines are
wall-clock seconds (``time.time()``) because they are compared across machines.
Longer than most modules: the book and its Redis link are one idea (what is cooling, everywhere),
and what is learned from peers is bounded here, next to what is published.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from app.redact import register_secrets, without_password
from app.settings import Settings, SettingsError

__all__ = ["Cooldowns", "SharedCooldowns", "open_cooldowns"]

log = logging.getLogger(__name__)

# The link runs in the background, so Redis may take its time to answer; it must not take
# forever, or a silently vanished Redis would never be noticed. One immediate retry rides over a
# pooled connection that Redis closed (a Redis restart).
_REDIS_TIMEOUTS = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
# Every router key and channel in Redis starts with this, apart from other users of the same Redis.
_PREFIX = "generative-api-router:cooldowns"
# How often the link wakes to send this worker's news when nothing arrives from Redis.
_TICK_SECONDS = 0.2
# A full read of every cooldown in force, beside the news: it repairs anything a lost message
# missed and notices a Redis that vanished without closing the connection.
_RESYNC_SECONDS = 5.0
_FIRST_RETRY_SECONDS = 0.5
_LAST_RETRY_SECONDS = 10.0

# Raises deadlines (never lowers them), forgets expired ones, and tells every worker what changed,
# in one atomic step. KEYS[1]: the hash key -> deadline. ARGV: channel, now, then key, deadline pairs.
# The news names its hash: deployments with other namespaces on the same database hear it too.
_RAISE_SCRIPT = """
local now = tonumber(ARGV[2])
local raised, any = {}, false
for i = 3, #ARGV, 2 do
  local deadline = tonumber(ARGV[i + 1])
  if deadline > (tonumber(redis.call('HGET', KEYS[1], ARGV[i])) or 0) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    raised[ARGV[i]] = ARGV[i + 1]  -- as sent: cjson would round the number to 14 digits
    any = true
  end
end
local latest, all = 0, redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local deadline = tonumber(all[i + 1]) or 0
  if deadline <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif deadline > latest then
    latest = deadline
  end
end
if latest > 0 then
  -- a minute's margin: Redis's clock is not the instances' clock
  redis.call('PEXPIREAT', KEYS[1], math.ceil((latest + 60) * 1000))
end
if any then
  redis.call('PUBLISH', ARGV[1], cjson.encode({[KEYS[1]] = raised}))
end
return any and 1 or 0
"""


class _Deadlines:
    """Combination key -> wall-clock deadline: the later of this worker's own and what it learned
    from others; read without a lock.

    The two are kept apart because they are trusted differently. This worker's own deadlines are
    only ever raised and are the only ones it shares. Learned ones are believed for at most a
    bound from when they were first heard (a peer's clock may run ahead), and a full read of
    the shared store replaces them all: a cooldown deleted there is forgotten here.
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._own: dict[str, float] = {}
        # key -> (the deadline as announced, the deadline believed)
        self._learned: dict[str, tuple[float, float]] = {}
        # Under gevent every access is between switches anyway; plain threads (tests) need it.
        self._lock = threading.Lock()

    def get(self, key: str) -> float:
        return self._until.get(key, 0.0)

    def raise_to(self, key: str, deadline: float) -> bool:
        """Raise this worker's own deadline for ``key`` to ``deadline``; True if it was later."""
        with self._lock:
            if deadline <= self._own.get(key, 0.0):
                return False
            self._own[key] = deadline
            if deadline > self._until.get(key, 0.0):
                self._until[key] = deadline
            return True

    def learn(self, key: str, announced: float, now: float, longest: float) -> None:
        """Another worker announced ``key`` cooling until ``announced``: believe it for at most ``longest`` s."""
        if not now < announced < math.inf:
            return  # over already, or not a time at all
        with self._lock:
            known = self._learned.get(key)
            if known is not None and announced <= known[0]:
                return
            believed = min(announced, now + longest)
            self._learned[key] = (announced, believed)
            if believed > self._until.get(key, 0.0):
                self._until[key] = believed

    def relearn(self, announced: dict[str, float], now: float, longest: float) -> None:
        """Everything others have announced, read in full: what is no longer announced is forgotten."""
        with self._lock:
            learned: dict[str, tuple[float, float]] = {}
            for key, deadline in announced.items():
                if not now < deadline < math.inf:
                    continue
                known = self._learned.get(key)
                # The same announcement read again keeps the bound it got when first heard: read
                # every few seconds, a far-off deadline must not be pushed ahead each time.
                if known is not None and known[0] == deadline:
                    learned[key] = known
                else:
                    learned[key] = (deadline, min(deadline, now + longest))
            until = {key: deadline for key, deadline in self._own.items() if deadline > now}
            for key, (_, believed) in learned.items():
                if believed > until.get(key, 0.0):
                    until[key] = believed
            self._learned, self._until = learned, until

    def in_force(self, now: float) -> dict[str, float]:
        with self._lock:
            return {key: until for key, until in self._until.items() if until > now}

    def own_in_force(self, now: float) -> dict[str, float]:
        """This worker's own deadlines still running: what it may announce."""
        with self._lock:
            return {key: until for key, until in self._own.items() if until > now}


class Cooldowns:
    """The cooldowns of one worker process (``memory://``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._deadlines = _Deadlines()

    def until(self, key: str) -> float:
        """When combination ``key`` stops cooling down (a ``clock()`` time; 0 if it never did)."""
        return self._deadlines.get(key)

    def cool(self, keys: Iterable[str], seconds: float) -> None:
        """Cool ``keys`` down for ``seconds`` from now; a cooldown that already ends later is kept."""
        deadline = self._clock() + seconds
        for key in keys:
            if self._deadlines.raise_to(key, deadline):
                self._raised(key, deadline)

    def cooling_count(self, now: float) -> int:
        """How many combinations are cooling down at ``now``."""
        return len(self._deadlines.in_force(now))

    def _raised(self, key: str, deadline: float) -> None:
        """Called with every deadline this worker raised itself."""


class SharedCooldowns(Cooldowns):
    """Cooldowns shared through Redis by every worker and instance pointed at it (``redis://...``).

    Only books with the same ``namespace`` share (COOLDOWN_NAMESPACE); a deadline learned from
    another is believed for at most ``longest`` seconds (MAX_COOLDOWN_SECONDS) from when it was heard.
    """

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        *,
        namespace: str = "",
        longest: float = Settings.max_cooldown_seconds,
    ) -> None:
        super().__init__(clock)
        self._link = _RedisLink(url, self._deadlines, clock, namespace, longest)
        # The link's thread holds no reference to the book: once the book is garbage (an app built
        # by a test and dropped), the thread ends and its connections close.
        self._finalizer = weakref.finalize(self, self._link.stop)
        self._link.start()

    def close(self) -> None:
        """Stop sharing now (it also stops once the book is garbage); the book goes on for this worker alone."""
        self._finalizer()

    def _raised(self, key: str, deadline: float) -> None:
        self._link.send(key, deadline)


def open_cooldowns(
    storage: str,
    clock: Callable[[], float] = time.time,
    *,
    namespace: str = "",
    longest: float = Settings.max_cooldown_seconds,
) -> Cooldowns:
    """The book ``storage`` (``COOLDOWN_STORAGE``) names; raises SettingsError for one it cannot use.

    ``namespace`` and ``longest`` matter only to a shared book (see SharedCooldowns).
    """
    if storage == "memory://":
        return Cooldowns(clock)
    try:
        book = SharedCooldowns(storage, clock, namespace=namespace, longest=longest)
    except ValueError as exc:
        raise SettingsError(f"COOLDOWN_STORAGE {without_password(storage)} cannot be used: {exc}") from None
    log.info(
        "cooldowns shared through %s, namespace %s (learned in the background)",
        without_password(storage),
        namespace or "-",
    )
    return book


class _RedisLink:
    """The background side of a shared book: sends this worker's cooldowns, learns everyone else's."""

    def __init__(
        self, url: str, deadlines: _Deadlines, clock: Callable[[], float], namespace: str, longest: float
    ) -> None:
        password = urlsplit(url).password
        if password:
            register_secrets([password])
        # Imported here: a worker with memory:// cooldowns never loads the Redis client (~7 MB).
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # ValueError for a malformed URL
        self._client = redis.Redis.from_url(url, **_REDIS_TIMEOUTS, retry=Retry(NoBackoff(), 1))
        self._where = without_password(url)
        self._deadlines = deadlines
        self._clock = clock
        self._longest = longest
        self._hash = f"{_PREFIX}:{namespace}" if namespace else _PREFIX
        # Pub/sub channels are global to a Redis, hashes are per database: the channel names the
        # database so deployments on other databases of the same Redis never hear each other.
        self._channel = f"{_PREFIX}:db{self._client.connection_pool.connection_kwargs.get('db', 0)}"
        self._raise = self._client.register_script(_RAISE_SCRIPT)
        self._outbox: dict[str, float] = {}
        self._outbox_lock = threading.Lock()
        self._stopped = threading.Event()
        self._down = False
        self._retry = _FIRST_RETRY_SECONDS
        self._thread = threading.Thread(target=self._run, name="cooldowns-redis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def send(self, key: str, deadline: float) -> None:
        """Queue a deadline for Redis; the request that calls this never waits for it."""
        with self._outbox_lock:
            self._outbox[key] = max(deadline, self._outbox.get(key, 0.0))

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                try:
                    self._follow()
                except Exception as exc:  # whatever broke, the link must live on
                    self._went_down(exc)
                    self._stopped.wait(self._retry)
                    self._retry = min(self._retry * 2, _LAST_RETRY_SECONDS)
        finally:
            self._client.close()

    def _follow(self) -> None:
        """Stay in step with Redis until stopped; raises RedisError when Redis fails."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe before reading what is in force, so nothing raised in between is missed.
            pubsub.subscribe(self._channel)
            # What this worker decided goes back first: a restarted Redis has forgotten it. Only
            # that: what it learned from others, given back, would outlive its deletion from Redis.
            self._push(self._deadlines.own_in_force(self._clock()))
            self._pull()
            self._came_back()
            resync_at = time.monotonic() + _RESYNC_SECONDS
            while not self._stopped.is_set():
                message = pubsub.get_message(timeout=_TICK_SECONDS)
                while message is not None:
                    self._learn(message.get("data"))
                    message = pubsub.get_message()
                with self._outbox_lock:
                    outbox, self._outbox = self._outbox, {}
                self._push(outbox)
                if time.monotonic() >= resync_at:
                    self._pull()
                    resync_at = time.monotonic() + _RESYNC_SECONDS
        finally:
            pubsub.close()

    def _push(self, deadlines: dict[str, float]) -> None:
        if not deadlines:
            return
        pairs = [item for key, until in deadlines.items() for item in (key, repr(until))]
        self._raise(keys=[self._hash], args=[self._channel, repr(self._clock()), *pairs])

    def _pull(self) -> None:
        announced: dict[str, float] = {}
        for key, until in self._client.hgetall(self._hash).items():
            deadline = _deadline(until)
            if deadline is not None:
                announced[key.decode(errors="replace")] = deadline
        self._deadlines.relearn(announced, self._clock(), self._longest)

    def _learn(self, data: object) -> None:
        try:
            news = json.loads(data)
        except (TypeError, ValueError):
            return  # not ours: someone else publishing on the channel
        raised = news.get(self._hash) if isinstance(news, dict) else None
        if isinstance(raised, dict):  # else another namespace's news
            now = self._clock()
            for key, until in raised.items():
                deadline = _deadline(until)
                if deadline is not None:
                    self._deadlines.learn(key, deadline, now, self._longest)

    def _went_down(self, exc: Exception) -> None:
        if not self._down:
            # Once per outage and worker: loud, because failing combinations are now re-discovered
            # by every worker on its own.
            log.error(
                "cooldown storage %s unreachable (%s): still serving, cooldowns now kept per worker "
                "process until it answers again (tried again at most %.0f s apart)",
                self._where,
                exc,
                _LAST_RETRY_SECONDS,
            )
            self._down = True
        else:
            log.debug("cooldown storage %s still unreachable: %s", self._where, exc)

    def _came_back(self) -> None:
        self._retry = _FIRST_RETRY_SECONDS
        if self._down:
            log.warning("cooldown storage %s answers again: cooldowns are shared again", self._where)
            self._down = False


def _deadline(value: object) -> float | None:
    """A deadline as stored or announced (a number, or its text), if it is a finite number."""
    if isinstance(value, bool):
        return None
    try:
        deadline = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return deadline if math.isfinite(deadline) else None
