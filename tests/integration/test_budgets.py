"""Budgets over real sockets: the real gunicorn (two workers) and the fake vendor, counted in a real
Redis shared by every worker (and, for the shared case, two instances)."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from app.budgets.ledger import Line
from app.budgets.limits import BudgetStorageDown, window_span
from app.budgets.redis_ledger import RedisLedger, _Link
from tests.support.fake_redis import CLOSE, FakeRedis
from tests.support.processes import ROOT, wait_until
from tests.support.raw_http import json_post
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.scripted_vendor import ScriptedVendor

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (CI installs it: apt-get install redis-server)"
)

KEY = "rk-budget-web-0123456789"
OTHER_KEY = "rk-budget-batch-0123456789"
KEYS = f"web={KEY},batch={OTHER_KEY}"
HELLO = [{"role": "user", "content": "Hello"}]
# The fake's usage for HELLO: prompt 4 + 5 // 4 = 5; completion 1 + len("Hello from openai! You
# said: Hello") // 4 = 9. The router's input estimate for it: 4 + ceil(5 / 4) = 6.
PROMPT, COMPLETION, INPUT_ESTIMATE = 5, 9, 6
# Stream pieces of 8 characters: the router counts 2 tokens per content event.
PIECE = "abcdefgh"
PIECE_TOKENS = 2


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


def budgeted(redis_server: RedisServer, budget: str, **env: str) -> dict[str, str]:
    return {"BUDGET": budget, "BUDGET_STORAGE": redis_server.url, "ROUTER_API_KEYS": KEYS, **env}


def bearer(key: str = KEY) -> dict[str, str]:
    # A new connection per call, so gunicorn hands calls to either worker.
    return {"Authorization": f"Bearer {key}", "Connection": "close"}


def chat(router, key: str = KEY, **fields) -> requests.Response:
    body = {"model": "gpt-4o", "messages": HELLO, **fields}
    return requests.post(router.url("/v1/chat/completions"), json=body, headers=bearer(key), timeout=30)


def budget_of(router, key: str = KEY) -> dict:
    answer = requests.get(router.url("/v1/budget"), headers=bearer(key), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def spent(router, key: str = KEY) -> float:
    return budget_of(router, key)["budgets"][0]["spent"]


def events_of(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event."""
    found = []
    for block in raw.decode().split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            found.append((name, "\n".join(data)))
    return found


def test_a_spent_token_budget_rejects_the_call_with_retry_after_to_the_window_end(start_router, fake, redis_server):
    router = start_router(workers=2, **budgeted(redis_server, "60 tokens per hour"))
    # Each call reserves 6 + 10 and costs 14: after 4 calls 56 are spent and 4 left, less than
    # the input estimate and one output token.
    statuses = [chat(router, max_tokens=10).status_code for _ in range(4)]
    assert statuses == [200] * 4
    refused = chat(router, max_tokens=10)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "60 tokens per hour" in error["message"]
    wait = math.ceil(window_span("hour", time.time())[1] - time.time())
    assert abs(int(refused.headers["Retry-After"]) - wait) <= 2
    assert len(fake.requests()) == 4  # refused calls never reach a vendor
    assert spent(router) == 4 * (PROMPT + COMPLETION)
    assert budget_of(router)["budgets"][0]["remaining"] == 60 - 56

    # The spent gauge is written in the background, within a second of the call.
    spent_line = 'router_budget_spent{client="web",unit="tokens",window="hour"} 56.0'

    def metrics_with_spent() -> str | None:
        text = requests.get(router.url("/metrics"), timeout=10).text
        return text if spent_line in text else None

    metrics = wait_until(metrics_with_spent, 5, interval=0.2, message="router_budget_spent at 56")
    assert 'router_budget_rejections_total{client="web"} 1.0' in metrics
    assert 'router_budget_limit{client="web",unit="tokens",window="hour"} 60.0' in metrics


def stream_until_closed(router, path: str, body: dict, key: str = KEY) -> tuple[bytes, float]:
    """The whole stream a client reads, and when its last byte arrived (time.time())."""
    with requests.post(router.url(path), json=body, headers=bearer(key), stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        raw, last = b"", time.time()
        for data in answer.iter_content(chunk_size=None):
            raw += data
            last = time.time()
    return raw, last


# Keeps Redis busy (one script spinning on TIME): commands sent meanwhile wait and run after it.
_BUSY_SCRIPT = """
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])
"""


def keep_redis_busy(redis_server: RedisServer, seconds: float) -> threading.Thread:
    """Redis answers nobody for ``seconds`` from now (join the thread to wait for the end)."""
    patient = redis.Redis(port=redis_server.port, socket_timeout=seconds + 10)
    busy = threading.Thread(target=patient.eval, args=(_BUSY_SCRIPT, 0, int(seconds * 1e6)))
    busy.start()
    return busy


def answers_within(redis_server: RedisServer, seconds: float) -> bool:
    """Whether Redis answers a PING within ``seconds`` (a plain socket: redis-py would retry)."""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=seconds) as connection:
        connection.sendall(b"PING\r\n")
        try:
            return connection.recv(16).startswith(b"+PONG")
        except TimeoutError:
            return False


LONG_STREAM = {"content_chunks": [PIECE] * 200, "interval": 0.02}


def test_a_chat_stream_is_cut_at_the_budget_with_one_error_event_and_the_vendor_closed_at_once(
    start_router, fake, redis_server
):
    router = start_router(workers=2, **budgeted(redis_server, "100 tokens per day"))
    fake.behave("openai", **LONG_STREAM)  # 400 tokens: the fake ignores max tokens
    raw, last = stream_until_closed(
        router, "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": True}
    )

    events = events_of(raw)
    assert all(data != "[DONE]" for _, data in events)
    errors = [json.loads(data) for _, data in events if '"error"' in data]
    assert len(errors) == 1 and '"error"' in events[-1][1]  # one error event, and it is the last
    assert errors[0]["error"]["code"] == "budget_exceeded"
    assert errors[0]["error"]["type"] == "insufficient_quota"
    relayed = sum(len(json.loads(data)["choices"][0]["delta"].get("content") or "") for _, data in events[:-1])
    # The reservation held 100 - 6 output tokens; the stream went on until its count passed them.
    assert (100 - INPUT_ESTIMATE) * 4 <= relayed <= (100 - INPUT_ESTIMATE + PIECE_TOKENS) * 4

    [record] = wait_until(lambda: [s for s in fake.streams("openai") if s["client_closed_at"]], timeout=5)
    assert record["client_closed_at"] - last < 1.0  # the vendor request was closed at once
    assert record["events_sent"] < 100
    assert spent(router) <= 100 + PIECE_TOKENS
    assert 'router_budget_cutoffs_total{client="web"} 1.0' in requests.get(router.url("/metrics"), timeout=10).text
    assert "budget is spent" in router.logs()


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        (
            "/v1/responses",
            {"model": "gpt-4o", "input": "Hello", "stream": True},
            lambda events: (
                [name for name, _ in events[-2:]] == ["error", "response.failed"]
                and json.loads(events[-2][1])["code"] == "budget_exceeded"
            ),
        ),
        (
            "/v1/messages",
            {"model": "gpt-4o", "max_tokens": 4000, "messages": HELLO, "stream": True},
            lambda events: (
                events[-1][0] == "error"
                and json.loads(events[-1][1])["error"]["type"] == "rate_limit_error"
                and json.loads(events[-1][1])["error"]["message"].startswith("budget exceeded")
            ),
        ),
    ],
)
def test_responses_and_messages_streams_end_with_their_own_error_event_when_cut(
    start_router, fake, redis_server, path, body, check
):
    router = start_router(workers=2, **budgeted(redis_server, "100 tokens per day"))
    fake.behave("openai", **LONG_STREAM)
    raw, _ = stream_until_closed(router, path, body)
    events = events_of(raw)
    assert check(events), events[-3:]
    assert sum(1 for name, _ in events if name == "error") == 1


def test_twenty_concurrent_streams_of_one_client_overshoot_by_at_most_one_read_each(start_router, fake, redis_server):
    limit, streams = 300, 20
    router = start_router(workers=2, **budgeted(redis_server, f"{limit} tokens per hour"))
    # One content event every 50 ms: each vendor read holds one event, of 2 tokens.
    fake.behave("openai", content_chunks=[PIECE] * 100, interval=0.05)
    outcomes: list[str] = []

    def one() -> None:
        body = {"model": "gpt-4o", "messages": HELLO, "stream": True, "max_tokens": 40}
        with requests.post(
            router.url("/v1/chat/completions"), json=body, headers=bearer(), stream=True, timeout=60
        ) as answer:
            if answer.status_code != 200:
                outcomes.append(str(answer.status_code))
                return
            raw = b"".join(answer.iter_content(chunk_size=None))
        outcomes.append("cut" if b"budget_exceeded" in raw else "completed" if b"[DONE]" in raw else "other")

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    counts = Counter(outcomes)
    assert counts["other"] == 0 and sum(counts.values()) == streams, counts
    assert counts["429"] >= 1  # no request starts on a spent budget
    assert counts["cut"] >= 1, counts
    total = spent(router)
    # What a started stream may spend beyond the limit: the tokens of one vendor read.
    started = counts["cut"] + counts["completed"]
    assert total <= limit + started * PIECE_TOKENS, (total, counts)
    assert total >= limit - (INPUT_ESTIMATE + 1)  # and the budget was used, not wasted on reservations


def test_two_instances_on_one_redis_share_one_budget_exactly(start_router, fake, redis_server):
    env = budgeted(redis_server, "100 tokens per hour")
    first, second = start_router(workers=2, **env), start_router(workers=2, **env)
    # Each call costs 14 and needs 7 free: 7 calls fit in 100 (98 spent), wherever they go.
    statuses = [chat(router, max_tokens=10).status_code for router in (first, second) * 5]
    assert statuses == [200] * 7 + [429] * 3
    assert spent(first) == spent(second) == 7 * (PROMPT + COMPLETION)


def test_usd_budgets_price_cached_input_apart_from_input_and_output(start_router, fake, redis_server):
    models = [
        {"vendor": "openai", "model": "gpt-4o", "price": {"input": 2.5, "output": 10.0, "cached_input": 1.25}},
        {"vendor": "gemini", "model": "gemini-2.0-flash", "price": {"input": 0.1, "output": 0.4}},
    ]
    router = start_router(models=models, workers=2, **budgeted(redis_server, "1 usd per day;1000 tokens per day"))
    fake.behave("openai", cached_tokens=4)
    assert chat(router).status_code == 200
    body = {"model": "gpt-4o", "input": "Hello", "stream": True}  # Responses streams carry the usage
    stream_until_closed(router, "/v1/responses", body)
    usd, tokens = budget_of(router)["budgets"]
    # Per call: 1 fresh input token at 2.5, 4 cached at 1.25, 9 output at 10 USD per million.
    assert usd["unit"] == "usd" and usd["spent"] == pytest.approx(2 * (2.5 + 4 * 1.25 + 9 * 10) / 1e6)
    assert tokens["spent"] == 2 * (PROMPT + COMPLETION)


def test_a_max_tokens_beyond_what_lua_counts_exactly_is_reserved_as_the_most_it_can(start_router, fake, redis_server):
    # Output free, so the whole max tokens fits a usd budget: in Lua a count past 2^63 turned
    # negative, the reservation read as refused, and the call failed with a 500.
    models = [{"vendor": "openai", "model": "gpt-4o", "price": {"input": 1.0, "output": 0.0}}]
    router = start_router(models=models, workers=1, **budgeted(redis_server, "5 usd per day"))
    answer = chat(router, max_tokens=2**64 - 1)
    assert answer.status_code == 200, answer.text
    assert budget_of(router)["budgets"][0]["spent"] == pytest.approx(PROMPT / 1e6)


def streaming_vendor(events: list[dict], pause: float = 0.0, before_done: float = 0.0) -> ScriptedVendor:
    """A vendor streaming ``events`` (chat chunks) ``pause`` s apart, then [DONE] ``before_done`` s
    later; the body ends when the connection closes."""

    def answer(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for event in events:
                handler.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                handler.wfile.flush()
                time.sleep(pause)
            time.sleep(before_done)
            handler.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass  # the router closed the stream

    return ScriptedVendor(answer)


def chunk(choices: list[dict], **fields) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": choices,
        **fields,
    }


def test_a_stream_of_n_answers_is_cut_when_one_finished_early_and_the_others_run_past_the_budget(
    start_router, fake, redis_server
):
    # Answer 0 finishes at once; answers 1-3 go on (the vendor ignores max tokens): 1,200 tokens
    # against a budget of 300. The stream is whole only when all four have finished.
    first = chunk([{"index": 0, "delta": {"content": PIECE}, "finish_reason": "stop"}])
    rest = [chunk([{"index": i, "delta": {"content": PIECE}, "finish_reason": None} for i in (1, 2, 3)])] * 200
    vendor = streaming_vendor([first, *rest], pause=0.005)
    try:
        router = start_router(workers=1, OPENAI_BASE_URL=vendor.url, **budgeted(redis_server, "300 tokens per day"))
        body = {"model": "gpt-4o", "messages": HELLO, "stream": True, "n": 4}
        raw, _ = stream_until_closed(router, "/v1/chat/completions", body)
        events = events_of(raw)
        assert json.loads(events[-1][1])["error"]["code"] == "budget_exceeded", events[-3:]
        assert spent(router) <= 300 + 3 * PIECE_TOKENS * 10  # at most about one read beyond
    finally:
        vendor.stop()


def test_a_messages_stream_is_settled_before_its_message_stop_reaches_the_client(start_router, fake, redis_server):
    # Messages ends with the vendor's usage, before the vendor's [DONE] (here a second later): the
    # client's next call, made at once, must already see the usage, not the reservation.
    events = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hi there"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        chunk([], usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}),
    ]
    vendor = streaming_vendor(events, before_done=1.0)
    try:
        router = start_router(workers=1, OPENAI_BASE_URL=vendor.url, **budgeted(redis_server, "1000000 tokens per day"))
        body = {"model": "gpt-4o", "max_tokens": 20000, "messages": HELLO, "stream": True}
        headers = bearer()
        with requests.post(router.url("/v1/messages"), json=body, headers=headers, stream=True, timeout=30) as answer:
            for line in answer.iter_lines():
                if line == b"event: message_stop":
                    seen = spent(router)
                    break
        assert seen == 12 + 3
    finally:
        vendor.stop()


def test_redis_failing_while_a_stream_asks_for_more_cuts_it_as_a_storage_failure_not_a_spent_budget(
    start_router, fake, redis_server
):
    router = start_router(workers=1, **budgeted(redis_server, "100000 tokens per day"))
    fake.behave("openai", **LONG_STREAM)  # 400 tokens over 4 s; the reservation holds 10
    threading.Timer(0.3, redis_server.kill).start()  # before the stream asks for more the second time
    raw, _ = stream_until_closed(
        router, "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": True, "max_tokens": 10}
    )
    error = json.loads(events_of(raw)[-1][1])["error"]
    assert error["code"] == "budget_storage_unavailable", error
    metrics = requests.get(router.url("/metrics"), timeout=10).text
    assert 'router_budget_cutoffs_total{client="web"} 0.0' in metrics
    assert 'outcome="budget_storage_unavailable"' in metrics  # router_stream_duration_seconds


def test_a_client_that_disconnects_mid_stream_is_charged_for_what_was_read(start_router, fake, redis_server):
    router = start_router(workers=2, **budgeted(redis_server, "10000 tokens per day"))
    fake.behave("openai", content_chunks=[PIECE] * 100, interval=0.05)
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    received = 0
    with requests.post(router.url("/v1/chat/completions"), json=body, headers=bearer(), stream=True, timeout=30) as a:
        for data in a.iter_content(chunk_size=None):
            received += data.count(PIECE.encode())
            if received >= 10:
                break
    [record] = wait_until(lambda: [s for s in fake.streams("openai") if s["client_closed_at"]], timeout=5)
    charged = wait_until(lambda: spent(router) < 1000 and spent(router), timeout=5)  # the reservation was replaced
    # What the client received, and at most what the vendor sent before the router closed it.
    assert INPUT_ESTIMATE + received * PIECE_TOKENS <= charged <= INPUT_ESTIMATE + record["events_sent"] * PIECE_TOKENS


def test_failed_over_attempts_are_not_charged(start_router, fake, redis_server):
    router = start_router(workers=2, **budgeted(redis_server, "10000 tokens per day"), COOLDOWN_SECONDS="0")
    fake.behave("openai", status=500)
    for _ in range(6):
        assert chat(router, model="any-model").status_code == 200
    assert fake.requests("openai")  # some calls failed over from openai to gemini
    # Gemini's answer "Hello from gemini! You said: Hello" is as long as openai's: 14 tokens.
    assert spent(router) == 6 * (PROMPT + COMPLETION)


def test_a_client_leaving_while_a_failed_request_is_settled_does_not_interrupt_the_settlement(
    start_router, fake, redis_server
):
    # The vendor fails after 0.6 s; from 0.4 s to 0.85 s Redis is busy, so the settlement of the
    # unanswered request waits for it; the client leaves at 0.7 s, during that wait.
    router = start_router(workers=1, **budgeted(redis_server, "1000 tokens per day"))
    fake.behave("openai", status=500, delay=0.6)
    body = {"model": "gpt-4o", "messages": HELLO}
    # Kept alive (no Connection: close), so the router takes the client's close for its departure.
    request = json_post("/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
    with socket.create_connection(("127.0.0.1", router.port)) as client:
        client.sendall(request)
        time.sleep(0.4)
        busy = keep_redis_busy(redis_server, 0.45)
        time.sleep(0.3)
    busy.join(10)
    assert wait_until(lambda: "chat/completions" in router.logs(), timeout=10)  # the access line
    assert "not settled" not in router.logs()
    assert spent(router) == 0  # the reservation was given back


def test_get_budget_matches_the_usage_the_vendor_reported(start_router, fake, redis_server):
    router = start_router(workers=2, **budgeted(redis_server, "100000 tokens per month"))
    total = 0
    for _ in range(3):
        total += chat(router).json()["usage"]["total_tokens"]
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    raw, _ = stream_until_closed(router, "/v1/chat/completions", body)
    [usage] = [json.loads(data)["usage"] for _, data in events_of(raw) if '"usage":{' in data]
    total += usage["total_tokens"]
    shown = budget_of(router)
    assert shown["client"] == "web"
    [month] = shown["budgets"]
    assert (month["spent"], month["remaining"], month["limit"]) == (total, 100000 - total, 100000)
    assert month["unit"] == "tokens" and month["window"] == "month"
    assert month["resets_at"].endswith("Z")


def test_budgets_of_named_clients_are_independent(start_router, fake, redis_server):
    router = start_router(workers=2, **budgeted(redis_server, "1000 tokens per day", BUDGET_WEB="30 tokens per day"))
    assert [chat(router).status_code for _ in range(3)] == [200, 200, 429]
    assert [chat(router, OTHER_KEY).status_code for _ in range(3)] == [200] * 3
    assert budget_of(router)["budgets"][0]["limit"] == 30
    batch = budget_of(router, OTHER_KEY)
    assert batch["client"] == "batch" and batch["budgets"][0]["spent"] == 3 * (PROMPT + COMPLETION)


def test_redis_down_refuses_budgeted_calls_with_503_and_one_error_line_then_recovers(
    start_router, fake, redis_server, tmp_path
):
    router = start_router(workers=1, **budgeted(redis_server, "1000 tokens per day"))
    assert chat(router).status_code == 200
    redis_server.kill()
    for _ in range(5):
        started = time.monotonic()
        answer = chat(router)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "budget_storage_unavailable"
        assert answer.headers["Retry-After"]
        assert time.monotonic() - started < 3
    assert len(fake.requests()) == 1  # nothing was spent uncounted
    lines = [line for line in router.logs().splitlines() if "budget storage" in line and "unreachable" in line]
    assert len(lines) == 1 and " ERROR " in lines[0], lines
    assert "Traceback" not in router.logs()

    revived = RedisServer(tmp_path / "redis-again", port=redis_server.port)
    try:
        assert wait_until(lambda: chat(router).status_code == 200, timeout=10)
        assert "budget storage" in router.logs() and "answers again" in router.logs()
    finally:
        revived.kill()


def test_a_restarted_redis_counts_the_next_budgeted_call_at_once(start_router, fake, redis_server, tmp_path):
    # A restart loses the loaded scripts and closes every connection the workers hold: the first
    # call after it must still be counted and answered, not refused for a dead connection.
    router = start_router(workers=1, **budgeted(redis_server, "1000 tokens per day"))
    assert chat(router).status_code == 200
    redis_server.kill()
    revived = RedisServer(tmp_path / "redis-again", port=redis_server.port)
    try:
        answer = chat(router)
        assert answer.status_code == 200, answer.text
        assert budget_of(router)["budgets"][0]["spent"] == PROMPT + COMPLETION  # counted anew
        assert "unreachable" not in router.logs()
    finally:
        revived.kill()


def test_concurrent_reservations_in_redis_never_grant_more_than_the_limit(redis_server):
    # Eight processes' worth of ledgers racing on one counter: the check and the charge are one
    # step in Redis, so the grants add up to the limit exactly, never more.
    limit, line = 100, Line("generative-api-router:budget:test", 100, time.time() + 3600, 0.0, 1.0)
    granted: list[int] = []

    def reserve_many() -> None:
        ledger = RedisLedger(redis_server.url)
        for _ in range(40):
            grant = ledger.reserve([line], 1, 1)
            if grant.tokens:
                granted.append(grant.tokens)

    threads = [threading.Thread(target=reserve_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(granted) == limit
    assert RedisLedger(redis_server.url).spent([line.key]) == (limit,)


def test_the_redis_ledger_authenticates_and_selects_the_database_its_url_names(tmp_path):
    server = RedisServer(tmp_path / "redis-password", password="budget-secret-pw")
    try:
        url = f"redis://:budget-secret-pw@127.0.0.1:{server.port}/3"
        ledger = RedisLedger(url)
        line = Line("generative-api-router:budget:auth", 10, time.time() + 60, 2.0, 1.0)
        assert ledger.reserve([line], 5, 1).tokens == 5
        assert ledger.spent([line.key]) == (7.0,)
        server.client.execute_command("SELECT", 3)
        assert float(server.client.get(line.key)) == 7.0
        assert ledger.where == f"redis://:***@127.0.0.1:{server.port}/3"
    finally:
        server.kill()


def counter(name: str, limit: float = 1000) -> Line:
    return Line(f"generative-api-router:budget:{name}", limit, time.time() + 3600, 0.0, 1.0)


def test_a_settlement_after_a_redis_restart_is_sent_again_on_a_new_connection(redis_server, tmp_path):
    ledger, line = RedisLedger(redis_server.url), counter("restart")
    ledger.reserve([line], 10, 1)
    redis_server.kill()
    revived = RedisServer(tmp_path / "redis-again", port=redis_server.port)
    try:
        assert ledger.adjust([line], [-4.0]) == (-4.0,)  # the old connection is closed: not lost in it
        assert float(revived.client.get(line.key)) == -4.0
    finally:
        revived.kill()


def test_a_reservation_that_timed_out_is_not_sent_again_and_is_given_back(redis_server):
    # The reservation's wait times out after 0.5 s, and Redis runs it when it is free again. Sent
    # again on a new connection, it would be charged twice; left alone, it would stay charged
    # for a call that was refused.
    ledger, line = RedisLedger(redis_server.url), counter("slow")
    ledger.reserve([line], 1, 1)
    busy = keep_redis_busy(redis_server, 1.0)
    assert wait_until(lambda: not answers_within(redis_server, 0.05), timeout=0.4)
    with pytest.raises(BudgetStorageDown):
        ledger.reserve([line], 10, 1)
    busy.join(10)
    # Once (sent twice and released once it would be 11), then given back.
    assert wait_until(lambda: float(redis_server.client.get(line.key)) == 1.0, timeout=5)


def test_calls_failing_together_log_the_outage_once(redis_server, caplog):
    ledger, line = RedisLedger(redis_server.url), counter("together")
    busy = keep_redis_busy(redis_server, 1.0)
    assert wait_until(lambda: not answers_within(redis_server, 0.05), timeout=0.4)
    refused: list[bool] = []

    def reserve() -> None:
        try:
            ledger.reserve([line], 1, 1)
        except BudgetStorageDown:
            refused.append(True)

    with caplog.at_level(logging.ERROR, logger="app.budgets.redis_ledger"):
        callers = [threading.Thread(target=reserve) for _ in range(5)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
    busy.join(10)
    assert len(refused) == 5
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_a_reservation_arriving_after_its_release_charges_nothing(redis_server):
    # The release may reach Redis first (another connection): it leaves the hold marked released.
    ledger, line = RedisLedger(redis_server.url), counter("late")
    keys = ["generative-api-router:budget:hold:test-late", line.key]
    assert ledger._on_link(ledger._run_release, keys) == 0  # nothing held yet
    args = [5, 1, 120_000, line.limit, 0.0, 1.0, int(line.expires_at * 1000)]
    with pytest.raises(redis.exceptions.InvalidResponse):
        ledger._on_link(ledger._reserve, keys, args, [])
    assert redis_server.client.get(line.key) is None
    assert ledger.spent([line.key]) == (0.0,)


def test_a_reservation_sent_again_gets_its_first_grant_and_is_charged_once(redis_server):
    # Sent again on a new connection after its first one closed, Redis may have run it already.
    ledger, line = RedisLedger(redis_server.url), counter("twice", limit=100)
    keys = ["generative-api-router:budget:hold:test-twice", line.key]
    args = [30, 1, 120_000, line.limit, 5.0, 1.0, int(line.expires_at * 1000)]
    first = ledger._on_link(ledger._reserve, keys, args, [])
    redis_server.client.incrbyfloat(line.key, 50)  # other calls meanwhile
    again = ledger._on_link(ledger._reserve, keys, args, [])
    assert first.tokens == again.tokens == 30
    assert again.spent == (85.0,)  # 35 charged once, plus the others' 50
    assert ledger._on_link(ledger._run_release, keys) == 1
    assert float(redis_server.client.get(line.key)) == 50.0


def test_a_release_leaves_a_counter_deleted_meanwhile_deleted(redis_server):
    ledger, line = RedisLedger(redis_server.url), counter("reset")
    keys = ["generative-api-router:budget:hold:test-reset", line.key]
    ledger._on_link(ledger._reserve, keys, [10, 1, 120_000, line.limit, 0.0, 1.0, int(line.expires_at * 1000)], [])
    redis_server.client.delete(line.key)  # an operator reset the budget
    assert ledger._on_link(ledger._run_release, keys) == 1
    assert redis_server.client.get(line.key) is None  # not a negative count that never expires


def test_a_reservation_on_a_connection_redis_had_closed_is_not_queued_for_release(redis_server):
    # Redis gone: the reused connection reads its end before any reply (the script never ran) and
    # a new one is refused. Nothing to give back, and no false "may stay charged" later.
    ledger, line = RedisLedger(redis_server.url), counter("gone")
    ledger.reserve([line], 1, 1)
    redis_server.kill()
    with pytest.raises(BudgetStorageDown):
        ledger.reserve([line], 1, 1)
    assert ledger._unreleased == {}


def test_unanswered_reservations_are_released_by_one_background_thread(redis_server):
    ledger, line = RedisLedger(redis_server.url), counter("many")
    held = []
    for number in range(50):
        keys = [f"generative-api-router:budget:hold:test-many-{number}", line.key]
        ledger._on_link(ledger._reserve, keys, [1, 1, 120_000, line.limit, 0.0, 1.0, int(line.expires_at * 1000)], [])
        held.append(keys)
    assert float(redis_server.client.get(line.key)) == 50.0
    before = set(threading.enumerate())
    for keys in held:
        ledger._release_later(keys)
    assert len([t for t in set(threading.enumerate()) - before if t.name == "budget-release"]) == 1
    assert wait_until(lambda: float(redis_server.client.get(line.key)) == 0.0, timeout=10)


def test_a_server_push_between_replies_is_skipped_not_taken_for_a_reply(redis_server):
    # Only over RESP3, which the ledger does not ask for; its reader skips pushes all the same.
    link = _Link(redis.Connection(port=redis_server.port, protocol=3))
    link.send("CLIENT", "TRACKING", "ON")
    assert link.read() == b"OK"
    link.send("GET", "tracked")
    assert link.read() is None
    redis_server.client.set("tracked", "changed")  # Redis pushes an invalidation to the link first
    link.send("PING")
    assert link.read() == b"PONG"
    link.connection.disconnect()


def test_the_ledger_speaks_resp2_so_no_server_push_lands_between_its_replies(redis_server):
    ledger = RedisLedger(redis_server.url)
    ledger.reserve([counter("protocol")], 1, 1)
    clients = redis_server.client.execute_command("CLIENT", "LIST").decode().splitlines()
    ours = [line for line in clients if "cmd=evalsha" in line]
    assert ours and all(re.search(r"\bresp=2\b", line) for line in ours), clients


# Redis's reply to a reservation that granted 5 tokens with 5 spent (what the script returns).
RESERVED = b"*3\r\n:5\r\n*0\r\n*1\r\n$1\r\n5\r\n"


def test_a_reply_cut_off_midway_is_not_sent_again():
    # The second reservation's reply breaks off after a few bytes and the connection closes:
    # Redis ran the script, so sending it again on a new connection would charge it twice.
    def answer(command: list[bytes]) -> object:
        if len(fake.commands) == 2:
            return [RESERVED[:10], CLOSE]
        return RESERVED

    fake = FakeRedis(answer)
    try:
        ledger = RedisLedger(fake.url)
        assert ledger.reserve([counter("cut")], 5, 1).tokens == 5
        with pytest.raises(BudgetStorageDown):
            ledger.reserve([counter("cut")], 5, 1)  # on the first call's connection, reused
        assert [command[0] for command in fake.commands] == [b"EVALSHA", b"EVALSHA"]
    finally:
        fake.close()


# A ledger in a gevent process, as in a worker, with a 50 ms timeout, against a Redis that answers
# each command 5 ms late: 30 replies (150 ms of waiting in all) then one it never answers.
_LEDGER_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import time, gevent
from app.budgets.ledger import Line
from app.budgets.limits import BudgetStorageDown
from app.budgets.redis_ledger import RedisLedger
from tests.support.fake_redis import FakeRedis
RESERVED = RESERVED_REPLY
silent = False
def answer(command):
    if silent:
        return None
    gevent.sleep(0.005)
    return RESERVED
ledger = RedisLedger(FakeRedis(answer).url + "?socket_timeout=0.05")
line = Line("generative-api-router:budget:gevent", 1e12, time.time() + 3600, 0.0, 1.0)
for _ in range(30):
    ledger.reserve([line], 5, 1)
assert ledger._idle[-1].raw is not None, "not read at the C level"
silent = True
started = time.monotonic()
try:
    ledger.reserve([line], 5, 1)
except BudgetStorageDown:
    print("refused after %.3f s" % (time.monotonic() - started))
"""


def test_under_gevent_every_reply_gets_the_whole_timeout_and_a_silent_redis_times_out():
    # The link waits on one timer for all its replies; restarted with start() after a stop,
    # libev's timer keeps only what was left of it, and a healthy Redis timed out after a few.
    run = subprocess.run(
        [sys.executable, "-c", _LEDGER_UNDER_GEVENT.replace("RESERVED_REPLY", repr(RESERVED))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("refused after"), run.stdout + run.stderr
    assert 0.045 <= float(run.stdout.split()[2]) < 1.0
