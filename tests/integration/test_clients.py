"""Named clients over the real gunicorn with two workers: what each one did, what each may do.

Requests per client and route, and tokens per client, are exact in /metrics (summed over both
workers) and in the access log; a client's own rate limit holds it alone back; failed key checks
from one address get it refused, even with the right key.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.processes import wait_until
from tests.support.prometheus import collect_files, pids_with_files, scrape
from tests.support.redis_server import REDIS_SERVER, RedisServer

ALPHA_KEY = "rk-client-alpha-0123456789abcdef"
BETA_KEY = "rk-client-beta-fedcba9876543210"
WRONG_KEY = "rk-client-guess-0000000000000000"
CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}
TEXT_ACCESS = re.compile(
    r"\[(?P<request_id>\S+)\] router\.access: method=(?P<method>\S+) path=(?P<path>\S+) "
    r"status=(?P<status>\d+) client=(?P<client>\S+) vendor="
)


def call(router, method: str, path: str, key: str | None, **kwargs) -> requests.Response:
    """One request on its own connection, so either worker may take it."""
    headers = {"Connection": "close", **({"Authorization": f"Bearer {key}"} if key else {})}
    return requests.request(method, router.url(path), headers=headers, timeout=30, **kwargs)


def usage_sum(answers: list[dict]) -> Counter:
    total: Counter = Counter()
    for usage in answers:
        total["prompt"] += usage["prompt_tokens"]
        total["completion"] += usage["completion_tokens"]
    return total


def test_two_named_clients_get_exact_request_and_token_counts_in_metrics_and_access_log(start_router, fake, tmp_path):
    keys_file = tmp_path / "client-keys"
    keys_file.write_text(f"# name key\nbeta {BETA_KEY}\n")
    metrics_dir = tmp_path / "metrics"
    router = start_router(
        workers=2,
        ROUTER_API_KEYS=f"alpha={ALPHA_KEY}",
        ROUTER_API_KEYS_FILE=str(keys_file),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    # A small delay keeps several requests open at once, so both workers take some.
    fake.behave("openai", delay=0.2)
    fake.behave("gemini", delay=0.2)

    def whole(key: str) -> dict:
        answer = call(router, "POST", CHAT, key, json=HELLO)
        assert answer.status_code == 200, answer.text
        return answer.json()["usage"]

    with ThreadPoolExecutor(8) as pool:
        alpha_usage = list(pool.map(whole, [ALPHA_KEY] * 6))
        beta_usage = list(pool.map(whole, [BETA_KEY] * 4))
    # A stream whose client asked for usage counts its tokens when it ends.
    stream = call(
        router, "POST", CHAT, ALPHA_KEY, json={**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    alpha_usage.append(events[-1]["usage"])
    assert call(router, "GET", MODELS, ALPHA_KEY).status_code == 200
    assert call(router, "POST", CHAT, ALPHA_KEY, json={"messages": "not a list"}).status_code == 400
    assert call(router, "GET", "/v1/no/such/route", BETA_KEY).status_code == 404
    assert call(router, "POST", CHAT, None, json=HELLO).status_code == 401
    assert call(router, "GET", MODELS, WRONG_KEY).status_code == 401
    # Neither counts as a client request: they are not /v1.
    assert call(router, "GET", "/health", None).status_code == 200

    expected_requests = {
        ("alpha", CHAT, "2xx"): 7,
        ("alpha", CHAT, "4xx"): 1,
        ("alpha", MODELS, "2xx"): 1,
        ("beta", CHAT, "2xx"): 4,
        ("beta", "unmatched", "4xx"): 1,
        ("anonymous", CHAT, "4xx"): 1,
        ("anonymous", MODELS, "4xx"): 1,
    }
    alpha_tokens, beta_tokens = usage_sum(alpha_usage), usage_sum(beta_usage)
    assert min(alpha_tokens.values()) > 0 and min(beta_tokens.values()) > 0
    for _ in range(4):  # fresh connections: whichever worker answers, the sums are the same
        metrics = scrape(router.base)
        for (client, route, status_class), count in expected_requests.items():
            labels = {"client": client, "route": route, "status_class": status_class}
            assert metrics.value("router_client_requests_total", **labels) == count, labels
        assert metrics.value("router_client_requests_total") == sum(expected_requests.values())
        assert metrics.label_values("client", "router_client_requests") == {"alpha", "beta", "anonymous"}
        for kind in ("prompt", "completion"):
            assert metrics.value("router_tokens_total", client="alpha", kind=kind) == alpha_tokens[kind]
            assert metrics.value("router_tokens_total", client="beta", kind=kind) == beta_tokens[kind]
        assert metrics.label_values("client", "router_tokens") == {"alpha", "beta"}

    # The sums really are over both workers: each wrote client counts of its own.
    per_worker = [
        collect_files(metrics_dir, pid).value("router_client_requests_total") for pid in pids_with_files(metrics_dir)
    ]
    assert sum(per_worker) == sum(expected_requests.values())
    assert len([count for count in per_worker if count]) == 2, per_worker

    # The access log says the same, line by line (a stream's line is written when it ends).
    def access_lines() -> list[re.Match]:
        return [match for line in router.logs().splitlines() if (match := TEXT_ACCESS.search(line))]

    wait_until(lambda: len([m for m in access_lines() if m["path"].startswith("/v1")]) == 16, 10, message="16 lines")
    logged = Counter(
        (m["client"], m["path"], f"{m['status'][0]}xx") for m in access_lines() if m["path"].startswith("/v1")
    )
    assert logged == {
        (client, "/v1/no/such/route" if route == "unmatched" else route, status_class): count
        for (client, route, status_class), count in expected_requests.items()
    }
    assert {m["client"] for m in access_lines() if m["path"] in ("/health", "/metrics")} == {"anonymous"}
    logs = router.logs()
    assert ALPHA_KEY not in logs and BETA_KEY not in logs and WRONG_KEY not in logs


def test_a_client_limit_applies_to_that_client_alone(start_router, fake):
    router = start_router(
        workers=2,
        LOG_FORMAT="json",
        ROUTER_API_KEYS=f"batch.jobs={ALPHA_KEY},web={BETA_KEY}",
        RATE_LIMIT_BATCH_JOBS="3/minute",
    )
    # One keep-alive connection per client: one worker serves it, so memory:// counts exactly.
    with requests.Session() as batch, requests.Session() as web:
        batch.headers["Authorization"] = f"Bearer {ALPHA_KEY}"
        web.headers["Authorization"] = f"Bearer {BETA_KEY}"
        batch_answers = [batch.post(router.url(CHAT), json=HELLO, timeout=30) for _ in range(5)]
        web_answers = [web.post(router.url(CHAT), json=HELLO, timeout=30) for _ in range(10)]

    assert [answer.status_code for answer in batch_answers] == [200, 200, 200, 429, 429]
    refused = batch_answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "3 per 1 minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert batch_answers[0].headers["X-RateLimit-Limit"] == "3"
    # RATE_LIMIT is unset: the other client is not limited at all.
    assert [answer.status_code for answer in web_answers] == [200] * 10
    assert "X-RateLimit-Limit" not in web_answers[0].headers
    assert len(fake.requests()) == 13  # refused calls never reached a vendor

    def access() -> list[dict]:
        lines = [json.loads(line) for line in router.logs().splitlines() if line.startswith("{")]
        return [line for line in lines if line["logger"] == "router.access" and line["path"] == CHAT]

    wait_until(lambda: len(access()) == 15, 10, message="15 access lines")
    assert Counter((line["client"], line["status"]) for line in access()) == {
        ("batch.jobs", 200): 3,
        ("batch.jobs", 429): 2,
        ("web", 200): 10,
    }
    metrics = scrape(router.base)
    assert metrics.value("router_client_requests_total", client="batch.jobs", status_class="4xx") == 2
    assert metrics.value("router_client_requests_total", client="web", status_class="2xx") == 10


def test_failed_key_checks_past_the_limit_get_429_even_for_the_right_key(start_router, fake):
    router = start_router(workers=2, ROUTER_API_KEYS=f"alpha={ALPHA_KEY}", AUTH_FAILURE_LIMIT="3/minute")
    # One keep-alive connection: one worker, whose memory:// count is exact.
    with requests.Session() as session:
        guesses = [
            session.get(router.url(MODELS), headers={"Authorization": f"Bearer {WRONG_KEY}"}, timeout=10)
            for _ in range(3)
        ]
        assert [answer.status_code for answer in guesses] == [401, 401, 401]
        refused = session.get(router.url(MODELS), headers={"Authorization": f"Bearer {WRONG_KEY}"}, timeout=10)
        right_key = session.post(
            router.url(CHAT), json=HELLO, headers={"Authorization": f"Bearer {ALPHA_KEY}"}, timeout=10
        )
    for answer in (refused, right_key):
        assert answer.status_code == 429
        assert answer.json()["error"]["type"] == "rate_limit_error"
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert fake.requests() == []  # the right key was refused before anything was called
    assert call(router, "GET", "/health", None).status_code == 200


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


def test_failed_key_checks_are_counted_across_workers_in_redis(start_router, fake, redis_server):
    router = start_router(
        workers=2,
        ROUTER_API_KEYS=f"alpha={ALPHA_KEY}",
        AUTH_FAILURE_LIMIT="4/minute",
        RATE_LIMIT_STORAGE=redis_server.url,
    )
    # A new connection per call: both workers see guesses, and share one count.
    statuses = [call(router, "GET", MODELS, WRONG_KEY).status_code for _ in range(6)]
    assert statuses == [401] * 4 + [429] * 2
    right_key = call(router, "POST", CHAT, ALPHA_KEY, json=HELLO)
    assert right_key.status_code == 429 and 1 <= int(right_key.headers["Retry-After"]) <= 60
    stored = redis_server.keys()  # a list of names, not a dict
    assert "LIMITS:LIMITER/generative-api-router/auth-failures/127.0.0.1/4/1/minute" in stored, stored
    assert not any(ALPHA_KEY in name or WRONG_KEY in name for name in stored)
