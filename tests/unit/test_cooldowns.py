"""The cooldown book: per worker in memory, and shared through a real redis-server."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cooldowns import Cooldowns, SharedCooldowns, open_cooldowns
from app.settings import Settings, SettingsError
from tests.support.processes import wait_until
from tests.support.redis_server import REDIS_SERVER, RedisServer

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (CI installs it: apt-get install redis-server)"
)
# Shorter than 8 characters, so no log redaction would hide it: only the code keeps it out.
PASSWORD = "Zq7pX2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# -- memory:// --------------------------------------------------------------------------------


def test_cooled_key_is_cooling_until_its_deadline_and_not_after():
    clock = Clock()
    book = Cooldowns(clock)
    book.cool(["openai#1/gpt-4o"], 30)
    assert book.until("openai#1/gpt-4o") == 1_030.0
    assert book.until("gemini#1/gemini-2.0-flash") == 0.0
    assert book.cooling_count(1_029.9) == 1
    assert book.cooling_count(1_030.0) == 0


def test_longer_cooldown_extends_and_shorter_one_never_shortens():
    clock = Clock()
    book = Cooldowns(clock)
    book.cool(["a"], 120)
    clock.now += 10
    book.cool(["a"], 30)  # would end at 1040: the running cooldown ends later and stays
    assert book.until("a") == 1_120.0
    book.cool(["a"], 300)
    assert book.until("a") == 1_310.0


def test_cooling_count_counts_every_key_cooled_together():
    book = Cooldowns(Clock())
    book.cool(["a", "b", "c"], 5)
    assert book.cooling_count(1_001.0) == 3


def test_memory_storage_opens_a_book_of_this_process_only():
    book = open_cooldowns("memory://")
    assert type(book) is Cooldowns


def test_unusable_storage_url_stops_start_up_naming_the_variable_without_the_password():
    with pytest.raises(SettingsError, match="COOLDOWN_STORAGE") as caught:
        Settings.from_env({"COOLDOWN_STORAGE": f"redis://:{PASSWORD}@127.0.0.1:notaport/0"})
    assert PASSWORD not in str(caught.value)
    with pytest.raises(SettingsError, match="COOLDOWN_STORAGE"):
        Settings.from_env({"COOLDOWN_STORAGE": "memcached://127.0.0.1:11211"})
    with pytest.raises(SettingsError, match="COOLDOWN_STORAGE") as caught:
        open_cooldowns(f"redis://:{PASSWORD}@127.0.0.1:notaport/0")
    assert PASSWORD not in str(caught.value)


def test_storage_setting_defaults_to_memory_and_takes_a_redis_url():
    assert Settings.from_env({}).cooldown_storage == "memory://"
    url = "redis://redis.internal:6379/2"
    assert Settings.from_env({"COOLDOWN_STORAGE": url}).cooldown_storage == url


# -- redis:// (a real redis-server) -------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    yield server
    server.kill()


@pytest.fixture
def open_book() -> Iterator:
    """``open_book(url)``: a shared book, closed when the test ends."""
    books: list[SharedCooldowns] = []

    def open_(url: str) -> SharedCooldowns:
        book = SharedCooldowns(url)
        books.append(book)
        return book

    yield open_
    for book in books:
        book.close()


def stored(server: RedisServer) -> dict[str, float]:
    raw = server.client.hgetall("generative-api-router:cooldowns")
    return {key.decode(): float(value) for key, value in raw.items()}


@needs_redis
def test_a_cooldown_reaches_every_other_book_within_a_second(redis_server, open_book):
    first, second = open_book(redis_server.url), open_book(redis_server.url)
    wait_until(lambda: redis_server.client.pubsub_numsub("generative-api-router:cooldowns:db0")[0][1] == 2, 5)

    started = time.monotonic()
    first.cool(["openai#1/gpt-4o"], 30)
    deadline = first.until("openai#1/gpt-4o")
    wait_until(lambda: second.until("openai#1/gpt-4o") == deadline, timeout=3)
    assert time.monotonic() - started < 1.0
    assert second.cooling_count(time.time()) == 1
    assert stored(redis_server) == {"openai#1/gpt-4o": deadline}


@needs_redis
def test_a_book_opened_later_learns_the_cooldowns_already_in_force(redis_server, open_book):
    first = open_book(redis_server.url)
    first.cool(["gemini#1/gemini-2.0-flash"], 30)
    wait_until(lambda: stored(redis_server), timeout=3)

    late = open_book(redis_server.url)
    wait_until(lambda: late.until("gemini#1/gemini-2.0-flash") == first.until("gemini#1/gemini-2.0-flash"), 3)


@needs_redis
def test_a_shorter_cooldown_from_another_book_never_shortens_the_shared_one(redis_server, open_book):
    first, second = open_book(redis_server.url), open_book(redis_server.url)
    first.cool(["k"], 60)
    long_deadline = first.until("k")
    wait_until(lambda: second.until("k") == long_deadline, timeout=3)
    second.cool(["k"], 5)
    third = open_book(redis_server.url)  # learns from Redis, after the shorter write was sent
    wait_until(lambda: third.until("k") == long_deadline, timeout=3)
    time.sleep(0.5)  # the shorter write has had every chance to land
    assert stored(redis_server) == {"k": long_deadline}
    assert first.until("k") == long_deadline


@needs_redis
def test_expired_cooldowns_leave_nothing_behind_in_redis(redis_server, open_book):
    book = open_book(redis_server.url)
    book.cool(["short"], 0.3)
    wait_until(lambda: "short" in stored(redis_server), timeout=3)
    time.sleep(0.4)
    book.cool(["long"], 30)  # every write forgets what has expired, and sets the hash's expiry
    wait_until(lambda: set(stored(redis_server)) == {"long"}, timeout=3)
    assert 0 < redis_server.client.ttl("generative-api-router:cooldowns") <= 91


@needs_redis
def test_requests_never_wait_on_a_dead_redis_and_its_outage_and_return_are_each_logged_once(
    redis_server, open_book, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="app.cooldowns")
    book = open_book(redis_server.url)
    book.cool(["before"], 60)
    wait_until(lambda: "before" in stored(redis_server), timeout=3)

    redis_server.kill()
    started = time.perf_counter()
    for number in range(1_000):
        book.cool([f"during-{number % 5}"], 60)
        book.until("before")
    assert time.perf_counter() - started < 0.5  # no network on this path: microseconds per call
    assert book.until("during-0") > time.time()  # still cools down, for this process alone

    wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records), timeout=5)
    time.sleep(2)  # a few reconnect attempts fail meanwhile
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "unreachable" in errors[0].getMessage() and ":***@" in errors[0].getMessage()

    revived = RedisServer(tmp_path / "redis-again", password=PASSWORD, port=redis_server.port)
    try:
        wait_until(lambda: "answers again" in caplog.text, timeout=15)
        # What the book learned and did meanwhile is given back to the Redis that forgot it.
        wait_until(lambda: set(stored(revived)) >= {"before", "during-0", "during-4"}, timeout=3)
    finally:
        revived.kill()
    assert PASSWORD not in caplog.text


@needs_redis
def test_a_dropped_book_ends_its_thread_and_closes_its_connections(redis_server):
    def connections() -> int:
        return len(redis_server.client.client_list()) - 1  # minus the test's own

    before = {t for t in threading.enumerate() if t.name == "cooldowns-redis"}
    book = SharedCooldowns(redis_server.url)
    wait_until(lambda: connections() >= 2, timeout=5)  # the subscriber and the command connection
    (thread,) = {t for t in threading.enumerate() if t.name == "cooldowns-redis"} - before

    del book
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    wait_until(lambda: connections() == 0, timeout=5)
