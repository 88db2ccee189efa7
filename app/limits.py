"""Rate limits per client with flask-limiter, counted in memory or shared through Redis.

``RATE_LIMIT`` (flask-limiter syntax, e.g. ``60/minute;1000/hour``) is one budget per client, the
client being its key (a hash of it) or, with keys off, its address. The chat and models routes
draw from the same budget; /health and /metrics never do. When the shared storage (Redis) cannot
be reached the router keeps serving: flask-limiter falls back to counting in each worker's memory
and goes back to the storage once it answers again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded
from limits.errors import ConfigurationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.auth import client_identity
from app.errors import RateLimited
from app.http import error_response
from app.redact import register_secrets, without_password
from app.settings import Settings, SettingsError

__all__ = ["install_rate_limits"]

log = logging.getLogger(__name__)

# Redis must answer fast or be treated as down: redis-py's defaults (5 s timeouts, 10 retries
# with back-off) would hold every request for seconds while Redis is away. One immediate retry
# still rides over a pooled connection that Redis closed (a Redis restart).
_REDIS_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": Retry(NoBackoff(), 1)}
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
# All router keys in the storage start with this, apart from other users of the same Redis.
_KEY_PREFIX = "generative-api-router"


def install_rate_limits(app: Flask, settings: Settings, blueprints: tuple[Blueprint, ...]) -> None:
    """Limit requests to ``blueprints`` per client as ``settings.rate_limit`` says (if it says any)."""
    if not settings.rate_limit:
        return
    storage = settings.rate_limit_storage
    where = without_password(storage)
    parts = urlsplit(storage)
    password, scheme = parts.password, parts.scheme
    if password:
        register_secrets([password])
    limiter = Limiter(
        client_identity,
        storage_uri=storage,
        storage_options=dict(_REDIS_OPTIONS) if scheme in _REDIS_SCHEMES else {},
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
        reason = str(exc).replace(password, "***") if password else str(exc)
        raise SettingsError(f"RATE_LIMIT_STORAGE {where} cannot be used: {reason}") from None
    budget = limiter.shared_limit(settings.rate_limit, scope="api")
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
    log.info("rate limit %s per client, counted in %s", settings.rate_limit, where)


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
        else:
            return record.levelno >= logging.getLogger().getEffectiveLevel()
        return True
