"""/metrics over the real gunicorn with two workers: exact sums, restarts, gauges, tokens, bounded labels."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.processes import wait_until
from tests.support.prometheus import children, collect_files, pids_with_files, scrape

HELLO = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


def chat(router, body: dict | None = None, **params: str) -> requests.Response:
    """One chat call on its own connection, so any worker may take it."""
    response = requests.post(
        router.url(CHAT),
        params=params,
        json=body or {"model": "any-model", "messages": HELLO},
        headers={"Connection": "close"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def chat_concurrently(router, count: int) -> list[requests.Response]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: chat(router), range(count)))


def workers(router, count: int = 2) -> set[int]:
    """The worker pids once gunicorn runs ``count`` of them."""
    return wait_until(lambda: (pids := children(router.process.pid)) and len(pids) == count and pids, 20)


def healthy(router) -> bool:
    try:
        return requests.get(router.url("/health"), timeout=5).ok
    except requests.RequestException:
        return False


def test_counts_are_exact_over_both_workers_and_survive_their_restart(start_router, fake, tmp_path):
    directory = tmp_path / "metrics"
    router = start_router(workers=2, PROMETHEUS_MULTIPROC_DIR=str(directory))
    first = workers(router)
    # A small delay keeps several requests open at once, so both workers take some.
    fake.behave("openai", delay=0.2)
    fake.behave("gemini", delay=0.2)
    chat_concurrently(router, 12)

    for _ in range(6):  # fresh connections: whichever worker answers, the sum is the same
        metrics = scrape(router.base)
        assert metrics.value("flask_http_request_total", method="POST", status="200") == 12
        assert metrics.value("flask_http_request_duration_seconds_count", url_rule=CHAT, status="200") == 12
        assert metrics.value("router_upstream_requests_total", outcome="ok", status_class="2xx") == 12
        assert metrics.value("router_upstream_ttfb_seconds_count") == 12
        assert metrics.value("router_selections_total") == 12
        assert metrics.value("router_attempts_per_request_count") == 12
        assert metrics.value("router_attempts_per_request_sum") == 12
        assert metrics.value("router_overhead_seconds_count") == 12

    for pid in first:
        os.kill(pid, signal.SIGKILL)
    second = wait_until(lambda: (pids := workers(router)) and not pids & first and pids, 20)
    wait_until(lambda: healthy(router), 30)  # a new worker may take seconds to boot on a busy machine
    assert scrape(router.base).value("flask_http_request_total", method="POST", status="200") == 12

    chat_concurrently(router, 8)
    metrics = scrape(router.base)
    assert metrics.value("flask_http_request_total", method="POST", status="200") == 20
    assert metrics.value("router_upstream_requests_total", outcome="ok") == 20

    # The 20 really are a sum over processes: killed workers' files still count, new ones add.
    per_pid = {
        pid: collect_files(directory, pid).value("flask_http_request_total", method="POST")
        for pid in pids_with_files(directory)
    }
    assert sum(per_pid.values()) == 20
    assert sum(per_pid.get(pid, 0) for pid in first) == 12
    assert sum(per_pid.get(pid, 0) for pid in second) == 8


def open_stream(router, body_extra: dict | None = None) -> requests.Response:
    response = requests.post(
        router.url(CHAT),
        json={"model": "any-model", "messages": HELLO, "stream": True, **(body_extra or {})},
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def in_flight(router) -> float:
    return scrape(router.base).value("router_streams_in_flight")


def test_streams_in_flight_rise_during_a_stream_and_return_to_zero(start_router, fake):
    router = start_router(workers=2)
    fake.behave("openai", chunks=6, interval=0.3)
    fake.behave("gemini", chunks=6, interval=0.3)
    assert in_flight(router) == 0
    started = time.monotonic()
    stream = open_stream(router)
    reader = threading.Thread(target=lambda: stream.content)  # reads to the end
    reader.start()
    wait_until(lambda: in_flight(router) == 1, 5, message="one stream in flight")
    reader.join(30)
    whole = time.monotonic() - started
    wait_until(lambda: in_flight(router) == 0, 5, message="no stream in flight")

    metrics = scrape(router.base)
    assert metrics.value("router_stream_duration_seconds_count", outcome="completed") == 1
    # The stream's whole duration (about 1.8 s), not the time to its headers (the exporter's own
    # histogram stops when a streaming view returns).
    assert 1.2 <= metrics.value("router_stream_duration_seconds_sum") <= whole + 0.5


def test_a_killed_worker_takes_its_streams_out_of_the_gauge(start_router, fake):
    router = start_router(workers=2)
    fake.behave("openai", stall_after=1, stall=60)
    fake.behave("gemini", stall_after=1, stall=60)
    stream = open_stream(router)
    wait_until(lambda: in_flight(router) == 1, 5, message="one stream in flight")
    first = workers(router)
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    stream.close()
    # gunicorn's child_exit hook marks the dead worker's live gauges gone.
    wait_until(lambda: not workers(router) & first, 20)
    wait_until(lambda: in_flight(router) == 0, 10, message="the dead worker's stream forgotten")


def test_tokens_are_counted_from_the_vendor_usage_and_only_what_it_reported(start_router, fake):
    router = start_router(workers=2)
    prompt = completion = 0
    for _ in range(3):
        usage = chat(router).json()["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]

    # A stream whose client asked for usage: its last chunk carries the vendor's counts.
    with open_stream(router, {"stream_options": {"include_usage": True}}) as stream:
        events = [line for line in stream.iter_lines() if line.startswith(b"data: {")]
    usage = requests.models.complexjson.loads(events[-1][6:])["usage"]
    prompt += usage["prompt_tokens"]
    completion += usage["completion_tokens"]
    # A stream whose client did not ask: the vendor sends no usage and nothing is counted.
    with open_stream(router) as stream:
        assert b'"usage"' not in stream.content

    metrics = scrape(router.base)
    assert prompt > 0 and completion > 0
    assert metrics.value("router_tokens_total", kind="prompt") == prompt
    assert metrics.value("router_tokens_total", kind="completion") == completion


def test_failover_and_cooldown_are_counted_per_combination(start_router, fake):
    router = start_router(
        models=[{"vendor": "flaky", "model": "m-flaky"}, {"vendor": "steady", "model": "m-steady"}],
        credentials=[
            {"platform": "flaky", "type": "api-key", "value": "flaky-key-0123456789"},
            {"platform": "steady", "type": "api-key", "value": "steady-key-0123456789"},
        ],
        vendors=[{"name": "flaky", "base_url": fake.url("flaky")}, {"name": "steady", "base_url": fake.url("steady")}],
        workers=1,
        COOLDOWN_SECONDS="60",
    )
    fake.behave("flaky", status=503)
    # Each call picks flaky first half of the time, until flaky's first failure cools it down.
    attempts = []
    while 2 not in attempts and len(attempts) < 40:
        attempts.append(int(chat(router).headers["X-Router-Attempts"]))
    attempts += [int(chat(router).headers["X-Router-Attempts"]) for _ in range(3)]
    assert attempts.count(2) == 1 and attempts[-3:] == [1, 1, 1]  # flaky is cooling down now

    metrics = scrape(router.base)
    flaky, steady = {"vendor": "flaky", "model": "m-flaky"}, {"vendor": "steady", "model": "m-steady"}
    assert metrics.value("router_failovers_total", **flaky) == 1
    assert metrics.value("router_upstream_requests_total", outcome="vendor_error", status_class="5xx", **flaky) == 1
    assert metrics.value("router_upstream_requests_total", outcome="ok", **steady) == len(attempts)
    assert metrics.value("router_selections_total", **flaky) == 1
    assert metrics.value("router_selections_total", **steady) == len(attempts)
    assert metrics.value("router_attempts_per_request_count") == len(attempts)
    assert metrics.value("router_attempts_per_request_sum") == len(attempts) + 1
    # The gauge is refreshed in the background, about once a second.
    wait_until(lambda: scrape(router.base).value("router_cooling_combinations") == 1, timeout=5)


def test_a_client_leaving_mid_stream_is_counted(start_router, fake):
    router = start_router(workers=1, STREAM_KEEPALIVE_SECONDS="0.2")
    fake.behave("openai", stall_after=1, stall=60)
    fake.behave("gemini", stall_after=1, stall=60)
    body = b'{"model": "any-model", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while b"data: " not in received:
            piece = conn.recv(65536)
            assert piece, received
            received += piece
    # The client is gone (like a closed tab) while the vendor is silent; keep-alives reveal it.
    wait_until(
        lambda: scrape(router.base).value("router_client_disconnects_total", phase="streaming") == 1,
        10,
        message="the disconnect counted",
    )
    metrics = scrape(router.base)
    assert metrics.value("router_stream_duration_seconds_count", outcome="client_gone") == 1
    assert metrics.value("router_streams_in_flight") == 0


JUNK_METHODS = ("BREW", "XYZZY", "PROPFIND", "M-SEARCH")


def send_junk(router, tag: str) -> None:
    """Requests whose every client-chosen part is new: method, path, query, model, headers."""
    for method in JUNK_METHODS:
        raw = f"{method}{tag.upper()[:4]} /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as conn:
            conn.sendall(raw.encode())
            answer = conn.recv(65536)
        assert answer.split(b" ", 2)[1] in (b"400", b"405"), answer[:200]
    session = requests.Session()
    headers = {"X-Request-ID": f"junk-{tag}", "User-Agent": f"junk-{tag}", "Authorization": f"Bearer junk-{tag}"}
    for path in (f"/junk-{tag}", f"/v1/junk-{tag}", f"/v1/models/junk-{tag}", f"/v1/chat/completions/junk-{tag}"):
        assert session.get(router.url(path), headers=headers, timeout=10).status_code == 404
    assert session.get(router.url(f"/v1/models?vendor=junk-{tag}"), headers=headers, timeout=10).ok
    answer = session.post(
        router.url(f"{CHAT}?vendor=junk-{tag}"), json={"model": "x", "messages": HELLO}, headers=headers, timeout=10
    )
    assert answer.status_code == 404
    assert chat(router, {"model": f"junk-{tag}", "messages": HELLO, f"junk_{tag}": 1}).ok
    bad = session.post(router.url(CHAT), json={"model": f"junk-{tag}", "messages": f"junk-{tag}"}, timeout=10)
    assert bad.status_code == 400
    session.delete(router.url("/health"), headers=headers, timeout=10)


def test_client_input_never_becomes_a_label_value(start_router, fake):
    router = start_router(workers=2)
    for vendor in ("openai", "gemini"):  # both vendors' series exist before the comparison
        chat(router, vendor=vendor)
    send_junk(router, uuid.uuid4().hex)
    before = scrape(router.base)
    tag = uuid.uuid4().hex
    send_junk(router, tag)
    after = scrape(router.base)

    # The second round of new junk made no new series, only bigger numbers in existing ones.
    assert set(after) == set(before)
    assert after.value("router_http_unknown_method_requests_total") == 2 * len(JUNK_METHODS)
    assert tag not in repr(sorted(after))
    assert after.label_values("method") <= {"GET", "HEAD", "POST", "DELETE"}
    assert after.label_values("url_rule") <= {
        "None",
        "/health",
        "/metrics",
        "/openapi.json",
        "/v1/models",
        "/v1/models/<path:model_id>",
        CHAT,
    }
    assert after.label_values("vendor", "router_") <= {"openai", "gemini"}
    assert after.label_values("model", "router_") <= {"gpt-4o", "gemini-2.0-flash"}
