"""Rate limits shared through a real Redis by several real routers, and what happens when it dies."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (CI installs it: apt-get install redis-server)"
)

KEY = "rk-shared-client-0123456789"
OTHER_KEY = "rk-second-client-0123456789"
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


def chat(router, key: str = KEY) -> requests.Response:
    # A new connection per call, so gunicorn hands calls to any of its workers.
    return requests.post(
        router.url("/v1/chat/completions"),
        json=HELLO,
        headers={"Authorization": f"Bearer {key}", "Connection": "close"},
        timeout=10,
    )


def test_two_instances_sharing_redis_together_allow_exactly_the_limit(start_router, fake, redis_server):
    env = {"RATE_LIMIT": "5/minute", "RATE_LIMIT_STORAGE": redis_server.url, "ROUTER_API_KEYS": f"{KEY},{OTHER_KEY}"}
    # Two workers each: counted per process, the two routers would allow 4 x 5 calls.
    first, second = start_router(workers=2, **env), start_router(workers=2, **env)

    statuses = [chat(router).status_code for router in (first, second) * 8]
    assert Counter(statuses) == {200: 5, 429: 11}
    assert statuses[:5] == [200] * 5
    assert len(fake.requests()) == 5  # refused calls never reached a vendor

    # Another client key has its own budget, shared the same way.
    statuses = [chat(router, OTHER_KEY).status_code for router in (second, first) * 4]
    assert Counter(statuses) == {200: 5, 429: 3}

    # What Redis holds names clients by a hash, never by their key.
    stored = redis_server.keys()
    assert stored and all("/generative-api-router/key:" in key for key in stored)
    assert not any(KEY in key or OTHER_KEY in key for key in stored)


def test_redis_down_mid_run_calls_still_succeed_and_an_error_is_logged(start_router, fake, redis_server):
    router = start_router(RATE_LIMIT="100/minute", RATE_LIMIT_STORAGE=redis_server.url, ROUTER_API_KEYS=KEY)
    assert chat(router).status_code == 200
    assert redis_server.keys()  # counted in Redis while it lives

    redis_server.kill()
    for _ in range(6):
        started = time.monotonic()
        response = chat(router)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 3  # no multi-second Redis timeouts and retries per call

    logs = router.logs()
    unreachable = [line for line in logs.splitlines() if "rate-limit storage" in line and "unreachable" in line]
    assert len(unreachable) == 1, logs[-3000:]  # one loud line, not one per request
    assert " ERROR " in unreachable[0]
    assert "Traceback" not in logs


def test_redis_hanging_under_concurrent_calls_logs_no_traceback(start_router, fake, redis_server):
    """Calls already waiting on Redis when it fails are served unlimited, with no traceback.

    flask-limiter switches to its in-memory fallback on the first failed check; the checks that
    were waiting on Redis at the same moment fail after it and are swallowed, each with an
    ERROR line and a full traceback (flask_limiter/_extension.py, _check_request_limit): on a
    busy router every Redis outage logged a burst of them. A hung Redis (SIGSTOP) makes the race
    certain: every concurrent check waits out the socket timeout.
    """
    router = start_router(RATE_LIMIT="1000/minute", RATE_LIMIT_STORAGE=redis_server.url, ROUTER_API_KEYS=KEY)
    assert chat(router).status_code == 200
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: chat(router).status_code, range(12)))
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert statuses == [200] * 12

    logs = router.logs()
    assert "Traceback" not in logs, logs[-3000:]
    unreachable = [line for line in logs.splitlines() if "rate-limit storage" in line and "unreachable" in line]
    assert len(unreachable) == 1, logs[-3000:]
    unchecked = [line for line in logs.splitlines() if "served without a rate-limit check" in line]
    assert unchecked and all(" WARNING " in line for line in unchecked), logs[-3000:]
