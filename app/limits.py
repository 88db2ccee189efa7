"""Rate limits per client with flask-limiter, and a limit on failed key checks per address.

``RATE_LIMIT`` (flask-limiter syntax, e.g. ``60/minute;1000/hour``) is one budget per client, the
client being its key (a hash of it) or, with keys off, its address; a named client's
``RATE_LIMIT_<NAME>`` replaces it for that client. The chat, Responses, embeddings and models
routes draw from the same budget; /health and /metrics never do. ``AUTH_FAILURE_LIMIT`` counts
failed key checks per client address, so nobody can guess keys at speed. When the shared storage
(Redis) cannot be reached the router keeps serving: both count in each worker's memory and go
back to the storage once it answers again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, request

from app.clients import client_name, current_client
from app.errors import RateLimited
from app.http import error_response
from app.redact import register_secrets, without_password
from app.settings import Settings, SettingsError

# flask-limiter, limits and the Redis client are imported where used: a router without rate
# limits or client keys never loads them (~10 MB per worker).
if TYPE_CHECKING:
    from flask_limiter import Limiter, RateLimitExceeded
    from limits import RateLimitItem
    from limits.strategies import FixedWindowRateLimiter

__all__ = ["AuthFailureLimit", "client_address", "client_identity", "install_rate_limits"]

log = logging.getLogger(__name__)

# Redis must answer fast or be treated as down: redis-py's defaults (5 s timeouts, 10 retries
# with back-off) would hold every request for seconds while Redis is away. One immediate retry
# still rides over a pooled connection that Redis closed (a Redis restart).
_REDIS_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
# All router keys in the storage start with this, apart from other users of the same Redis.
_KEY_PREFIX = "generative-api-router"
# While the storage is down, the failed-auth count tries it again this often (each try of a dead
# Redis costs the request that makes it up to about a second).
_RETRY_STORAGE_SECONDS = 10.0
_T = TypeVar("_T")


def install_rate_limits(app: Flask, settings: Settings, blueprints: tuple[Blueprint, ...]) -> None:
    """Limit requests to ``blueprints`` per client as ``RATE_LIMIT`` and ``RATE_LIMIT_<NAME>`` say (if any do)."""
    own_limits = {client.name: client.rate_limit for client in settings.api_keys if client.rate_limit}
    if not settings.rate_limit and not own_limits:
        return
    from flask_limiter import Limiter, RateLimitExceeded
    from limits.errors import ConfigurationError

    storage = settings.rate_limit_storage
    where, scheme = without_password(storage), urlsplit(storage).scheme
    _register_password(storage)
    limiter = Limiter(
        client_identity,
        storage_uri=storage,
        storage_options=_storage_options(storage),
        # The window starts at a client's first call: fixed windows cost one counter per client.
        strategy="fixed-window",
        key_prefix=_KEY_PREFIX,
        # The X-RateLimit-* headers are written below: flask-limiter's own would also put a
        # Retry-After on every answer and stretch a vendor's own Retry-After to our window.
        headers_enabled=False,
        # Storage down: count in this worker's memory with the same limits, not fail every call.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    # Preflights carry no key and cost nothing; they must not use up a client's budget.
    limiter.request_filter(lambda: request.method == "OPTIONS")
    try:
        limiter.init_app(app)
    except ConfigurationError as exc:
        raise SettingsError(f"RATE_LIMIT_STORAGE {where} cannot be used: {_hide(exc, storage)}") from None

    def client_limit() -> str:
        return own_limits.get(client_name(), settings.rate_limit)

    # Evaluated per request: the limit of whoever proved their key (RATE_LIMIT for the others); a
    # client with neither is not limited at all.
    budget = limiter.shared_limit(client_limit, scope="api", exempt_when=lambda: not client_limit())
    for blueprint in blueprints:
        budget(blueprint)

    _watch_storage_log(where)
    app.register_error_handler(RateLimitExceeded, _too_many_requests(limiter))
    app.after_request(_rate_limit_headers(limiter))
    if scheme != "memory" and not limiter.storage.check():
        log.error(
            "rate-limit storage %s does not answer: limits count per worker process, in memory, until it does",
            where,
        )
    log.info(
        "rate limit %s per client%s, counted in %s",
        settings.rate_limit or "none",
        "".join(f"; {name}: {limit}" for name, limit in own_limits.items()),
        where,
    )


def client_identity() -> str:
    """Who is calling, for rate limits: the hash of the proven client key, else the client's address."""
    client = current_client()
    if client is not None:
        return client.identity
    return "ip:" + client_address()


def client_address() -> str:
    # Behind trusted proxies ProxyFix has already put the real client address here.
    return request.remote_addr or "unknown"


class AuthFailureLimit:
    """Failed client-key checks per client address; an address over the limit is refused outright.

    Counted in the rate-limit storage, so with Redis every worker and instance sees one count.
    While that storage is unreachable each worker counts in its own memory and tries the storage
    again every ``_RETRY_STORAGE_SECONDS``.
    """

    def __init__(self, limit: str, storage: str) -> None:
        from limits import parse_many
        from limits.errors import ConfigurationError
        from limits.storage import MemoryStorage, storage_from_string
        from limits.strategies import FixedWindowRateLimiter

        self._items: list[RateLimitItem] = parse_many(limit)
        self._where = without_password(storage)
        _register_password(storage)
        try:
            shared = storage_from_string(storage, **_storage_options(storage))
        except ConfigurationError as exc:
            raise SettingsError(f"RATE_LIMIT_STORAGE {self._where} cannot be used: {_hide(exc, storage)}") from None
        self._shared = FixedWindowRateLimiter(shared)
        self._memory = FixedWindowRateLimiter(MemoryStorage())
        self._shared_down_since: float | None = None

    def wait_seconds(self, address: str) -> int | None:
        """Seconds until ``address`` may try a key again, or None if it is not over the limit."""
        return self._counting(lambda counter: self._wait(counter, address))

    def failed(self, address: str) -> None:
        """Count one failed key check from ``address``."""
        self._counting(lambda counter: self._hit(counter, address))

    def _wait(self, counter: FixedWindowRateLimiter, address: str) -> int | None:
        exhausted = [item for item in self._items if not counter.test(item, *self._ids(address))]
        if not exhausted:
            return None
        reset_at = max(counter.get_window_stats(item, *self._ids(address)).reset_time for item in exhausted)
        return max(math.ceil(reset_at - time.time()), 1)

    def _hit(self, counter: FixedWindowRateLimiter, address: str) -> None:
        for item in self._items:
            counter.hit(item, *self._ids(address))

    @staticmethod
    def _ids(address: str) -> tuple[str, ...]:
        return (_KEY_PREFIX, "auth-failures", address)

    def _counting(self, action: Callable[[FixedWindowRateLimiter], _T]) -> _T:
        """``action`` on the shared counter, or on this worker's own while the shared one is down."""
        down_since = self._shared_down_since
        if down_since is not None and time.monotonic() - down_since < _RETRY_STORAGE_SECONDS:
            return action(self._memory)
        try:
            result = action(self._shared)
        except Exception:
            if down_since is None:
                log.error(
                    "auth-failure storage %s unreachable: failed key checks now count per worker process in memory",
                    self._where,
                )
            self._shared_down_since = time.monotonic()
            return action(self._memory)
        if down_since is not None:
            self._shared_down_since = None
            log.warning("auth-failure storage %s answers again: failed key checks are counted there again", self._where)
        return result


def _too_many_requests(limiter: Limiter) -> Callable[[RateLimitExceeded], Response]:
    def answer(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        try:
            reset_at = current.window.reset_time if current is not None else 0.0
        except Exception:
            reset_at = 0.0  # the storage went away in between: any short wait will do
        wait = max(math.ceil(reset_at - time.time()), 1)
        error = RateLimited(
            f"Rate limit reached ({exc.limit.limit}). Try again in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
        return error_response(error)

    return answer


def _rate_limit_headers(limiter: Limiter) -> Callable[[Response], Response]:
    def add(response: Response) -> Response:
        current = limiter.current_limit
        if current is None:
            return response
        try:
            response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
            response.headers["X-RateLimit-Remaining"] = str(current.remaining)
            response.headers["X-RateLimit-Reset"] = str(current.reset_at)
        except Exception:
            # The storage went away after the request was counted: the answer matters more.
            log.debug("rate-limit headers left out: storage unreachable", exc_info=True)
        return response

    return add


def _watch_storage_log(where: str) -> None:
    limiter_log = logging.getLogger("flask-limiter")
    # Its storage notes (a warning and an info line) must reach the filter at any LOG_LEVEL; the
    # filter holds back its other lines below the configured level.
    limiter_log.setLevel(min(logging.getLogger().level, logging.INFO))
    for old in [f for f in limiter_log.filters if isinstance(f, _StorageLog)]:
        limiter_log.removeFilter(old)  # create_app may run more than once in a process
    limiter_log.addFilter(_StorageLog(where))


class _StorageLog(logging.Filter):
    """Makes flask-limiter's one-line notes about its storage say where, and what it means."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self._where = where

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith("Rate limit storage unreachable"):
            # Logged once per worker when the storage fails: loud, because limits are now per
            # worker process and no longer shared.
            record.levelno, record.levelname = logging.ERROR, "ERROR"
            record.msg = (
                "rate-limit storage %s unreachable: still serving, limits now count per worker "
                "process in memory until it answers again (tried again at most about 30 s apart)"
            )
            record.args = (self._where,)
        elif text.startswith("Rate limit storage recovered"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "rate-limit storage %s answers again: limits are shared again", (self._where,)
        elif text.endswith("Swallowing error") and record.exc_info and _storage_outage(record.exc_info[1]):
            # A check that was already waiting on the storage when it failed: flask-limiter moved
            # to its in-memory fallback for the next calls (the line above) and lets this one
            # through unchecked. That is the outage already reported, not a bug: one line, no
            # traceback. Any other error keeps its traceback.
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = (
                "rate-limit storage %s failed during this request's check: served without a rate-limit check (%s)"
            )
            record.args = (self._where, type(record.exc_info[1]).__name__)
            record.exc_info, record.exc_text = None, None
            return record.levelno >= logging.getLogger().getEffectiveLevel()
        else:
            return record.levelno >= logging.getLogger().getEffectiveLevel()
        return True


def _storage_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the storage could not be reached or did not answer in time."""
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # only memory:// storage without the Redis client
        return isinstance(exc, OSError)
    return isinstance(exc, OSError | RedisConnectionError | RedisTimeoutError)


def _storage_options(storage: str) -> dict[str, object]:
    if urlsplit(storage).scheme not in _REDIS_SCHEMES:
        return {}
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {**_REDIS_TIMEOUTS, "retry": Retry(NoBackoff(), 1)}


def _register_password(storage: str) -> None:
    """Register the storage URL's password as a secret, so no log line can show it."""
    password = urlsplit(storage).password
    if password:
        register_secrets([password])


def _hide(exc: Exception, storage: str) -> str:
    password = urlsplit(storage).password
    return str(exc).replace(password, "***") if password else str(exc)
