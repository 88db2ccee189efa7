"""Cooldowns shared through a real Redis by two real routers (two workers each), and what happens when it dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import RouterProcess, wait_until
from tests.support.prometheus import scrape
from tests.support.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (CI installs it: apt-get install redis-server)"
)

# Shorter than 8 characters, so no log redaction would hide it: only the code keeps it out.
PASSWORD = "Zq7pX2"
COOLDOWN = 3.0
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}
CHANNEL = "generative-api-router:cooldowns:db0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    yield server
    server.kill()


def chat(router: RouterProcess, vendor: str | None = None) -> requests.Response:
    # A new connection per call, so gunicorn hands calls to any of its workers.
    return requests.post(
        router.url("/v1/chat/completions"),
        params={"vendor": vendor} if vendor else {},
        json=HELLO,
        headers={"Connection": "close"},
        timeout=10,
    )


def cooling(router: RouterProcess) -> float:
    return scrape(router.base).value("router_cooling_combinations")


def every_worker_listens(redis_server: RedisServer, workers: int) -> None:
    wait_until(lambda: redis_server.client.pubsub_numsub(CHANNEL)[0][1] == workers, timeout=10)


def test_a_vendor_one_instance_cooled_gets_nothing_from_the_other_instance_for_the_cooldown(
    start_router, fake, redis_server, tmp_path
):
    env = {"COOLDOWN_STORAGE": redis_server.url, "COOLDOWN_SECONDS": str(COOLDOWN)}
    access_log = tmp_path / "b-access.log"
    first = start_router(workers=2, **env)
    # B's access log names the worker process (pid) of every call.
    second = start_router(
        workers=2, GUNICORN_ACCESS_LOG=str(access_log), GUNICORN_CMD_ARGS="--access-logformat '%(p)s %(r)s'", **env
    )
    every_worker_listens(redis_server, 4)
    fake.behave("gemini", status=500)
    assert cooling(second) == 0

    assert chat(first, vendor="gemini").status_code == 500
    (failed,) = fake.requests("gemini")
    cooled_at = failed["received_at"]

    # B learns it without sending any traffic of its own: its gauge shows the shared cooldown.
    wait_until(lambda: cooling(second) == 1, timeout=COOLDOWN - 0.5)

    # From a second after A's failure until just before the cooldown ends, B's workers skip gemini.
    time.sleep(max(0.0, cooled_at + 1.0 - time.time()))
    answers = []
    while time.time() < cooled_at + COOLDOWN - 0.3:
        answers.append(chat(second))
    assert len(answers) >= 5
    assert [(a.status_code, a.headers["X-Router-Attempts"]) for a in answers] == [(200, "1")] * len(answers)
    assert len(fake.requests("gemini")) == 1
    workers = {line.split()[0] for line in access_log.read_text().splitlines() if "/v1/chat/completions" in line}
    assert len(workers) == 2, workers  # both of B's workers answered in that time

    # The cooldown ends for B when it ends for A: the gauge falls with no traffic, and gemini is
    # tried again (and fails over), never before the cooldown's end.
    wait_until(lambda: cooling(second) == 0, timeout=5)
    wait_until(lambda: chat(second).status_code == 200 and len(fake.requests("gemini")) == 2, timeout=20)
    assert fake.requests("gemini")[1]["received_at"] >= cooled_at + COOLDOWN

    for router in (first, second):
        logs = router.logs()
        assert ":***@" in logs  # the storage is named, masked
        assert PASSWORD not in logs


def test_redis_killed_mid_run_both_instances_keep_serving_and_each_worker_says_so_once(
    start_router, fake, redis_server
):
    # At DEBUG every retry is logged too: none of those lines may hold the password either.
    env = {"COOLDOWN_STORAGE": redis_server.url, "COOLDOWN_SECONDS": str(COOLDOWN), "LOG_LEVEL": "debug"}
    routers = start_router(workers=2, **env), start_router(workers=2, **env)
    every_worker_listens(redis_server, 4)
    assert [chat(router).status_code for router in routers] == [200, 200]

    redis_server.kill()
    fake.behave("gemini", status=500)
    for router in routers * 5:
        started = time.monotonic()
        response = chat(router)
        assert response.status_code == 200, response.text  # failing gemini is failed over, per worker
        assert time.monotonic() - started < 3  # nothing waits on the dead Redis

    def unreachable(router: RouterProcess) -> list[str]:
        """The loud lines; at DEBUG each failed retry adds a quiet one."""
        return [line for line in router.logs().splitlines() if " ERROR " in line and "cooldown storage" in line]

    for router in routers:
        wait_until(lambda router=router: len(unreachable(router)) == 2, timeout=10)
    time.sleep(3)  # the workers try Redis again meanwhile (0.5, 1 and 2 s apart) and fail again
    for router in routers:
        lines = unreachable(router)
        assert len(lines) == 2, lines  # once per worker, not once per attempt or request
        assert all("unreachable" in line and ":***@" in line for line in lines)
        logs = router.logs()
        assert PASSWORD not in logs
        assert "Traceback" not in logs
