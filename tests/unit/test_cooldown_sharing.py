"""What a shared cooldown book shares with which others, under which names, and how far it trusts them.

Cooldowns are named by a digest of vendor, base URL, key and model, never by a key's position,
and shared only within a namespace. A peer's deadlines are believed for at most the longest
cooldown this instance would set itself, non-numbers are ignored, and only what this book decided
itself is ever written back: a cooldown deleted from Redis (or lost with a restarted Redis) is not
resurrected by the books that learned it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import app.cooldowns
from app.catalog import load_catalog
from app.cooldowns import SharedCooldowns
from app.settings import Settings, SettingsError
from tests.support.processes import wait_until
from tests.support.redis_server import REDIS_SERVER, RedisServer

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (CI installs it: apt-get install redis-server)"
)
HASH = "generative-api-router:cooldowns"
CHANNEL = "generative-api-router:cooldowns:db0"
LONGEST = Settings.max_cooldown_seconds  # what a book believes at most, unless told otherwise


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


@pytest.fixture
def open_book(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``open_book(url)``: a shared book that reads Redis in full every 0.2 s, closed at the end."""
    monkeypatch.setattr(app.cooldowns, "_RESYNC_SECONDS", 0.2)
    books: list[SharedCooldowns] = []

    def open_(url: str) -> SharedCooldowns:
        book = SharedCooldowns(url)
        books.append(book)
        return book

    yield open_
    for book in books:
        book.close()


def listening(server: RedisServer, books: int) -> None:
    wait_until(lambda: server.client.pubsub_numsub(CHANNEL)[0][1] == books, timeout=5)


def announce(server: RedisServer, deadlines: dict[str, object]) -> None:
    """What a peer's book does: store its deadlines and publish them (as a peer of this version)."""
    server.client.hset(HASH, mapping={key: str(value) for key, value in deadlines.items()})
    server.client.publish(CHANNEL, json.dumps({HASH: {key: str(value) for key, value in deadlines.items()}}))


@needs_redis
def test_a_deadline_from_a_peer_whose_clock_runs_an_hour_ahead_is_believed_for_the_longest_cooldown_only(
    redis_server, open_book
):
    book = open_book(redis_server.url)
    listening(redis_server, 1)
    heard = time.time()
    announce(redis_server, {"openai/gpt-4o/0123456789abcdef": heard + 3600 + 30})
    wait_until(lambda: book.until("openai/gpt-4o/0123456789abcdef") > 0, timeout=3)
    believed = book.until("openai/gpt-4o/0123456789abcdef")
    assert heard + LONGEST - 1 <= believed <= time.time() + LONGEST
    time.sleep(1)  # read in full again and again meanwhile: the bound runs from when it was heard
    assert book.until("openai/gpt-4o/0123456789abcdef") == believed


@needs_redis
@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-inf", "Infinity", "soon"])
def test_a_deadline_that_is_not_a_finite_number_is_ignored(redis_server, open_book, value):
    book = open_book(redis_server.url)
    listening(redis_server, 1)
    announce(redis_server, {"bad": value, "good": time.time() + 30})
    # Python's json reads these non-standard words; a careless peer may write them.
    redis_server.client.publish(CHANNEL, '{"' + HASH + '": {"bad2": Infinity, "bad3": NaN}}')
    wait_until(lambda: book.until("good") > 0, timeout=3)
    time.sleep(0.5)
    assert book.until("bad") == book.until("bad2") == book.until("bad3") == 0.0
    assert book.cooling_count(time.time()) == 1


@needs_redis
def test_a_cooldown_deleted_from_redis_is_forgotten_and_never_written_back(redis_server, open_book):
    book = open_book(redis_server.url)
    listening(redis_server, 1)
    announce(redis_server, {"theirs": time.time() + 60})
    book.cool(["mine"], 60)
    wait_until(lambda: book.until("theirs") > 0 and redis_server.client.hexists(HASH, "mine"), timeout=3)

    redis_server.client.delete(HASH)
    wait_until(lambda: book.until("theirs") == 0.0, timeout=3)
    assert book.until("mine") > time.time()  # its own decision stands
    time.sleep(0.5)
    assert not redis_server.client.hexists(HASH, "theirs")


@needs_redis
def test_after_a_redis_restart_a_book_gives_back_only_what_it_decided_itself(redis_server, open_book, tmp_path):
    book = open_book(redis_server.url)
    listening(redis_server, 1)
    announce(redis_server, {"theirs": time.time() + 60})
    book.cool(["mine"], 60)
    wait_until(lambda: book.until("theirs") > 0 and redis_server.client.hexists(HASH, "mine"), timeout=3)

    redis_server.kill()
    revived = RedisServer(tmp_path / "redis-again", port=redis_server.port)
    try:
        wait_until(lambda: revived.client.hexists(HASH, "mine"), timeout=15)
        time.sleep(0.5)
        assert revived.client.hkeys(HASH) == [b"mine"]
    finally:
        revived.kill()


@needs_redis
def test_books_in_other_namespaces_on_one_redis_never_cool_each_other(redis_server):
    ours = SharedCooldowns(redis_server.url, namespace="ours")
    theirs = SharedCooldowns(redis_server.url, namespace="theirs")
    try:
        listening(redis_server, 2)
        theirs.cool(["openai/gpt-4o/0123456789abcdef"], 60)
        ours.cool(["gemini/gemini-2.0-flash/fedcba9876543210"], 60)
        wait_until(lambda: theirs.until("gemini/gemini-2.0-flash/fedcba9876543210") == 0.0, timeout=1)
        time.sleep(0.7)  # news of each has reached the other
        assert ours.until("openai/gpt-4o/0123456789abcdef") == 0.0
        assert theirs.until("gemini/gemini-2.0-flash/fedcba9876543210") == 0.0
        assert set(redis_server.keys()) == {f"{HASH}:ours", f"{HASH}:theirs"}
    finally:
        ours.close()
        theirs.close()


def catalog_with(tmp_path: Path, keys: list[str], base_url: str = "https://api.openai.com/v1"):
    directory = tmp_path / "-".join(keys).replace("/", "_")
    directory.mkdir(exist_ok=True)
    (directory / "models.json").write_text(json.dumps([{"vendor": "openai", "model": "gpt-4o"}]))
    credentials = [{"platform": "openai", "type": "api-key", "value": key} for key in keys]
    (directory / "credentials.json").write_text(json.dumps(credentials))
    settings = Settings(
        models_file=str(directory / "models.json"),
        credentials_file=str(directory / "credentials.json"),
        vendors_file=str(directory / "vendors.json"),
    )
    return load_catalog(settings, environ={"OPENAI_BASE_URL": base_url})


def test_a_combination_is_cooled_under_a_digest_of_its_key_never_its_position_or_the_key_itself(tmp_path):
    first = catalog_with(tmp_path, ["sk-first-key-0000000001", "sk-second-key-000000002"])
    swapped = catalog_with(tmp_path, ["sk-second-key-000000002", "sk-first-key-0000000001"])
    other = catalog_with(tmp_path, ["sk-third-key-0000000003", "sk-fourth-key-000000004"])
    elsewhere = catalog_with(tmp_path, ["sk-first-key-0000000001", "sk-second-key-000000002"], "https://proxy/v1")

    def names(catalog) -> dict[str, str]:
        return {c.credential.secret: c.cooldown_key for c in catalog.combinations}

    assert names(first) == names(swapped)
    assert not set(names(first).values()) & set(names(other).values())
    assert not set(names(first).values()) & set(names(elsewhere).values())
    for name in names(first).values():
        assert name.startswith("openai/gpt-4o/")
        assert "sk-" not in name and "key" not in name
    # The default namespace: one per configuration, whatever the order of its entries.
    assert first.cooldown_namespace() == swapped.cooldown_namespace()
    assert len({c.cooldown_namespace() for c in (first, other, elsewhere)}) == 3


def test_cooldown_namespace_setting_takes_plain_names_only():
    assert Settings.from_env({}).cooldown_namespace == ""
    assert Settings.from_env({"COOLDOWN_NAMESPACE": "prod-eu.1"}).cooldown_namespace == "prod-eu.1"
    with pytest.raises(SettingsError, match="COOLDOWN_NAMESPACE"):
        Settings.from_env({"COOLDOWN_NAMESPACE": "a b"})
