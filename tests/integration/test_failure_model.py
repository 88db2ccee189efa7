"""The failure model over real sockets: answers that are not answers, the commit point, odd
statuses, custom CAs, half-closed and non-reading clients, deadlines and hedging."""

from __future__ import annotations

import socket
import time

import openai
import pytest
import requests

from tests.support.certs import make_certificates, openssl_available
from tests.support.processes import FakeVendorProcess, RouterProcess, router_config, wait_until
from tests.support.prometheus import scrape
from tests.support.raw_http import json_post
from tests.support.scripted_vendor import ScriptedVendor, send_whole
from tests.support.sdk import sdk

HELLO = [{"role": "user", "content": "Hello"}]
ONE_OPENAI = [{"vendor": "openai", "model": "gpt-4o"}]


def raw_stream(server, body: dict, timeout: float = 30, vendor: str | None = None) -> requests.Response:
    url = server.url("/v1/chat/completions" + (f"?vendor={vendor}" if vendor else ""))
    response = requests.post(url, json={**body, "stream": True}, stream=True, timeout=timeout)
    assert response.status_code == 200, response.text
    return response


# -- answers that are not answers --------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour",
    [
        {"error_in_200": {"message": "backend overloaded", "code": 503}},
        {"error_in_200": {"message": "something odd", "type": "server_error"}},
        {"no_choices": True},
    ],
    ids=["error-503", "error-without-code", "no-choices"],
)
def test_a_200_that_is_not_a_completion_fails_over_invisibly(start_router, fake, behaviour):
    fake.behave("openai", **behaviour)
    client = sdk(start_router(COOLDOWN_SECONDS="0"))
    for _ in range(6):
        completion = client.chat.completions.with_raw_response.create(model="any-model", messages=HELLO)
        assert completion.headers["x-vendor-source"] == "gemini"
        assert completion.parse().choices[0].message.content.startswith("Hello from gemini")


def test_a_200_carrying_an_error_is_answered_with_the_errors_status_when_nowhere_else_to_go(start_router, fake):
    fake.behave("openai", error_in_200={"message": "quota gone", "code": 429, "type": "insufficient_quota"})
    server = start_router(models=ONE_OPENAI)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(server).chat.completions.create(model="any-model", messages=HELLO)
    assert caught.value.body["message"] == "quota gone"
    assert caught.value.body["type"] == "insufficient_quota"


def test_a_200_without_choices_alone_is_a_502_not_an_empty_completion(start_router, fake):
    fake.behave("openai", no_choices=True)
    server = start_router(models=ONE_OPENAI)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(server).chat.completions.create(model="any-model", messages=HELLO)
    assert caught.value.status_code == 502
    assert "without choices" in caught.value.body["message"]


@pytest.mark.parametrize("status", [302, 307, 103])
def test_redirects_and_informational_answers_are_bad_answers_failed_over(start_router, fake, status):
    fake.behave("openai", status=status)
    server = start_router(COOLDOWN_SECONDS="0")
    client = sdk(server)
    for _ in range(10):
        completion = client.chat.completions.with_raw_response.create(model="any-model", messages=HELLO)
        assert completion.headers["x-vendor-source"] == "gemini"
    samples = scrape(server.base)
    assert samples.value("router_upstream_requests_total", vendor="openai", outcome="bad_answer") >= 1
    classes = samples.label_values("status_class", "router_upstream_requests")
    assert not {"1xx", "3xx"} & classes
    assert all(r["endpoint"] != "redirected" for r in fake.requests())  # never followed


def test_a_redirect_alone_is_a_502_never_passed_to_the_client(start_router, fake):
    fake.behave("openai", status=302)
    server = start_router(models=ONE_OPENAI)
    response = requests.post(server.url("/v1/chat/completions"), json={"messages": HELLO}, timeout=10)
    assert response.status_code == 502
    assert "Location" not in response.headers
    assert "answered HTTP 302" in response.json()["error"]["message"]


# -- the commit point -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour",
    [
        {"error_event_after": 0},  # a role chunk, then an error
        {"error_event_after": 0, "error_with_first": True},  # the error in the same write as content
        {"malformed_after": 0},
        {"done": False, "drop_after": 0},
    ],
    ids=["error-after-role", "error-with-first-content", "malformed-after-role", "drop-after-role"],
)
def test_failure_before_the_first_real_event_fails_over_invisibly(start_router, fake, behaviour):
    fake.behave("openai", chunks=4, **behaviour)
    client = sdk(start_router(COOLDOWN_SECONDS="0"))
    for _ in range(6):
        chunks = client.chat.completions.create(model="any-model", messages=HELLO, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("Hello from gemini"), text


def test_stream_broken_after_commit_cools_its_combination(start_router, fake):
    fake.behave("openai", chunks=6, drop_after=2)
    server = start_router(COOLDOWN_SECONDS="60")
    client = sdk(server)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="any-model", messages=HELLO, stream=True, extra_query={"vendor": "openai"}
        ):
            pass
    for _ in range(6):  # the router's own choice now avoids the broken combination
        completion = client.chat.completions.with_raw_response.create(model="any-model", messages=HELLO)
        assert completion.headers["x-vendor-source"] == "gemini"
    assert len(fake.requests("openai")) == 1, "the broken combination was tried again while cooling"


@pytest.mark.parametrize("done", [True, False])
@pytest.mark.parametrize("final_line_ending", [True, False])
def test_final_event_without_its_blank_line_is_a_complete_stream(start_router, fake, done, final_line_ending):
    fake.behave("openai", chunks=3, done=done, final_blank_line=False, final_line_ending=final_line_ending)
    server = start_router(models=ONE_OPENAI)
    body = raw_stream(server, {"messages": HELLO}).content.decode()
    assert body.endswith("data: [DONE]\n\n")
    assert '"error"' not in body
    samples = scrape(server.base)
    assert samples.value("router_stream_duration_seconds_count", outcome="completed") == 1


# -- custom certificate authorities -----------------------------------------------------------


@pytest.mark.skipif(not openssl_available(), reason="openssl is not installed")
def test_streams_over_tls_arrive_whole_and_leave_their_connection_to_the_next_call(tmp_path):
    """The router reads a streamed body from the vendor's socket itself: over TLS too, event by
    event, and the connection goes back to the pool at the body's end."""
    certificates = make_certificates(tmp_path / "pki")
    vendor = FakeVendorProcess(tls=(certificates.cert, certificates.key), ca=certificates.ca)
    try:
        vendor.behave("openai", chunks=4, interval=0.05)
        env = router_config(tmp_path / "config", vendor, models=ONE_OPENAI)
        router = RouterProcess({**env, "REQUESTS_CA_BUNDLE": str(certificates.ca)}, tmp_path / "router.log")
        try:
            client = sdk(router)
            for _ in range(3):
                chunks = client.chat.completions.create(model="any-model", messages=HELLO, stream=True)
                pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
                assert len(pieces) == 4 and "".join(pieces) == "Hello from openai! You said: Hello"
            client.chat.completions.create(model="any-model", messages=HELLO)
        finally:
            router.stop()
        assert len({r["connection"] for r in vendor.requests()}) == 1
    finally:
        vendor.stop()


@pytest.mark.skipif(not openssl_available(), reason="openssl is not installed")
def test_vendor_behind_a_private_ca_is_reached_with_requests_ca_bundle(tmp_path):
    certificates = make_certificates(tmp_path / "pki")
    vendor = FakeVendorProcess(tls=(certificates.cert, certificates.key), ca=certificates.ca)
    try:
        env = router_config(tmp_path / "config", vendor, models=ONE_OPENAI)
        trusted = RouterProcess({**env, "REQUESTS_CA_BUNDLE": str(certificates.ca)}, tmp_path / "trusted.log")
        try:
            answer = sdk(trusted).chat.completions.create(model="any-model", messages=HELLO)
            assert answer.choices[0].message.content.startswith("Hello from openai")
        finally:
            trusted.stop()
        untrusted = RouterProcess({**env, "REQUESTS_CA_BUNDLE": "", "SSL_CERT_FILE": ""}, tmp_path / "untrusted.log")
        try:
            with pytest.raises(openai.APIStatusError) as caught:
                sdk(untrusted).chat.completions.create(model="any-model", messages=HELLO)
            assert caught.value.status_code == 502
            assert "TLS handshake" in caught.value.body["message"]
        finally:
            untrusted.stop()
    finally:
        vendor.stop()


def test_vendor_calls_go_through_the_egress_proxy_the_environment_names(tmp_path, fake):
    # A forward proxy: it gets the vendor's absolute URL in the request line, passes the call on.
    seen: list[str] = []

    def relay(handler) -> None:
        seen.append(handler.path)
        upstream = requests.post(
            handler.path, data=handler.body, headers={"Authorization": handler.headers["Authorization"]}, timeout=10
        )
        send_whole(handler, upstream.status_code, upstream.headers["Content-Type"], upstream.content)

    proxy = ScriptedVendor(relay)
    env = router_config(tmp_path / "config", fake, models=ONE_OPENAI)
    proxied = RouterProcess(
        {**env, "HTTP_PROXY": f"http://127.0.0.1:{proxy.server.server_port}", "NO_PROXY": ""}, tmp_path / "proxied.log"
    )
    try:
        for _ in range(2):
            answer = sdk(proxied).chat.completions.create(model="any-model", messages=HELLO)
            assert answer.choices[0].message.content.startswith("Hello from openai")
        assert seen == [fake.url("openai") + "/chat/completions"] * 2
        # NO_PROXY naming the vendor's host: straight to the vendor again.
        proxied.stop()
        direct = RouterProcess(
            {**env, "HTTP_PROXY": f"http://127.0.0.1:{proxy.server.server_port}", "NO_PROXY": "127.0.0.1"},
            tmp_path / "direct.log",
        )
        try:
            assert sdk(direct).chat.completions.create(model="any-model", messages=HELLO).choices
            assert len(seen) == 2 and len(fake.requests("openai")) == 3
        finally:
            direct.stop()
    finally:
        proxied.stop()
        proxy.stop()


# -- clients that half-close, and clients that stop reading ----------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_client_that_half_closes_after_its_request_gets_its_answer(start_router, fake, stream):
    fake.behave("openai", delay=0.5, chunks=3, interval=0.1)
    server = start_router(models=ONE_OPENAI)
    request = json_post("/v1/chat/completions", {"messages": HELLO, "stream": stream}, version="HTTP/1.0")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while piece := sock.recv(65536):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), head
    assert b"Hello from openai" in body or b'"content":"Hello' in body
    if stream:
        assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("content", "chunks", "interval"),
    [
        # 100 kB events for 6 s: the router's socket buffer (a few MB) fills and its write stalls.
        (12_000_000, 120, 0.05),
        # 4 kB events every millisecond: the queue between vendor reader and client writer fills
        # too, so the reader is blocked in it when the stream is closed.
        (8_000_000, 2000, 0.001),
    ],
    ids=["big-events", "full-queue"],
)
def test_client_that_stops_reading_is_cut_off_after_client_send_timeout(start_router, fake, content, chunks, interval):
    # A client with a tiny receive window that reads nothing after the first bytes.
    fake.behave("openai", content="x" * content, chunks=chunks, interval=interval)
    server = start_router(models=ONE_OPENAI, CLIENT_SEND_TIMEOUT="1")
    request = json_post("/v1/chat/completions", {"messages": HELLO, "stream": True})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(request)
        sock.recv(1024)  # the stream started; now stop reading without closing
        [record] = wait_until(
            lambda: [s for s in fake.streams("openai") if s["client_closed_at"]], timeout=20, message="vendor closed"
        )
        assert record["outcome"] == "client_closed"
        assert record["events_sent"] < chunks
        samples = wait_until(
            lambda: (
                (s := scrape(server.base)).value("router_stream_duration_seconds_count", outcome="client_gone") and s
            ),
            timeout=5,
        )
        assert samples.value("router_client_disconnects_total", phase="streaming") == 1
        assert samples.value("router_streams_in_flight") == 0
        wait_until(lambda: "accepted no bytes" in server.logs(), timeout=5, message="one line for the cut")
        assert "Traceback" not in server.logs()
    finally:
        sock.close()


# -- deadlines and hedging --------------------------------------------------------------------


def test_request_timeout_bounds_the_whole_request_across_attempts(start_router, fake):
    for vendor in ("openai", "gemini"):
        fake.behave(vendor, delay=30)
    server = start_router(REQUEST_TIMEOUT="1.5", UPSTREAM_READ_TIMEOUT="1")
    started = time.monotonic()
    response = requests.post(server.url("/v1/chat/completions"), json={"messages": HELLO}, timeout=20)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["type"] == "timeout_error"
    assert "REQUEST_TIMEOUT" in error["message"] and "2 attempts" in error["message"]
    assert 1.4 < elapsed < 4
    assert response.headers["X-Router-Attempts"] == "2"


def test_request_timeout_cuts_the_attempt_in_flight_and_closes_its_connection(start_router, fake):
    fake.behave("openai", delay=30)
    server = start_router(models=ONE_OPENAI, REQUEST_TIMEOUT="1")
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(server).chat.completions.create(model="any-model", messages=HELLO)
    assert caught.value.status_code == 504
    [record] = wait_until(lambda: [r for r in fake.requests("openai") if r["client_closed_at"]], timeout=5)
    assert record["client_closed_at"] - record["received_at"] < 3


def test_request_timeout_ends_at_commit_so_a_long_pause_mid_stream_is_fine(start_router, fake):
    fake.behave("openai", chunks=4, stall_after=1, stall=2.5)
    server = start_router(models=ONE_OPENAI, REQUEST_TIMEOUT="1.5", UPSTREAM_READ_TIMEOUT="30")
    body = raw_stream(server, {"messages": HELLO}).content.decode()
    assert body.endswith("data: [DONE]\n\n") and '"error"' not in body


def test_first_token_timeout_moves_a_slow_stream_to_the_next_combination(start_router, fake):
    # Headers, a role chunk and SSE comments arrive at once; the first content would take 20 s.
    fake.behave("openai", content_delay=20, comment_every=0.2)
    server = start_router(FIRST_TOKEN_TIMEOUT="1", COOLDOWN_SECONDS="0")
    attempts = []
    for _ in range(10):
        started = time.monotonic()
        response = raw_stream(server, {"messages": HELLO})
        body = response.content.decode()
        assert response.headers["X-Vendor-Source"] == "gemini"
        assert body.endswith("data: [DONE]\n\n") and '"error"' not in body
        assert time.monotonic() - started < 5
        attempts.append(response.headers["X-Router-Attempts"])
    assert "2" in attempts, "the slow vendor was tried first at least once (random choice)"
    assert all(s["outcome"] == "client_closed" for s in fake.streams("openai"))


def test_hedge_answers_from_a_second_combination_and_closes_the_slow_one(start_router, fake):
    fake.behave("openai", delay=10)
    server = start_router(HEDGE_AFTER_SECONDS="0.5", COOLDOWN_SECONDS="0")
    client = sdk(server)
    for _ in range(10):
        started = time.monotonic()
        completion = client.chat.completions.with_raw_response.create(model="any-model", messages=HELLO)
        assert time.monotonic() - started < 4
        assert completion.headers["x-vendor-source"] == "gemini"
    slow = fake.requests("openai")
    assert slow, "the slow vendor was tried at least once (random choice)"
    for record in slow:
        closed = wait_until(lambda r=record: _closed_at(fake, r), timeout=5, message="slow call closed")
        assert closed - record["received_at"] < 3  # the vendor sees its connection closed at once
    samples = scrape(server.base)
    assert samples.value("router_hedges_total", result="won") >= 1
    hedges = samples.value("router_hedges_total", result="won") + samples.value("router_hedges_total", result="lost")
    assert hedges == len(slow)


def test_hedged_stream_uses_the_first_to_commit(start_router, fake):
    fake.behave("openai", first_delay=10)
    server = start_router(HEDGE_AFTER_SECONDS="0.3", COOLDOWN_SECONDS="0")
    for _ in range(4):
        response = raw_stream(server, {"messages": HELLO})
        assert response.headers["X-Vendor-Source"] == "gemini"
        attempts = int(response.headers["X-Router-Attempts"])
        assert attempts in (1, 2)
        assert response.content.decode().endswith("data: [DONE]\n\n")


def test_no_hedge_is_counted_when_no_other_combination_is_left(start_router, fake):
    fake.behave("openai", delay=0.6)
    server = start_router(models=ONE_OPENAI, HEDGE_AFTER_SECONDS="0.2")
    response = requests.post(server.url("/v1/chat/completions"), json={"messages": HELLO}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Router-Attempts"] == "1"
    samples = scrape(server.base)
    assert samples.value("router_hedges_total") == 0


def test_no_hedge_when_max_attempts_is_one(start_router, fake):
    fake.behave("openai", delay=1.0)
    fake.behave("gemini", delay=1.0)
    server = start_router(HEDGE_AFTER_SECONDS="0.2", MAX_ATTEMPTS="1")
    response = requests.post(server.url("/v1/chat/completions"), json={"messages": HELLO}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Router-Attempts"] == "1"
    assert len(fake.requests()) == 1


def _closed_at(fake: FakeVendorProcess, record: dict) -> float | None:
    for current in fake.requests("openai"):
        if current["received_at"] == record["received_at"]:
            return current["client_closed_at"]
    return None


def test_a_json_error_answering_a_stream_request_is_judged_by_its_own_code(start_router, fake):
    fake.behave("openai", error_in_200={"message": "quota gone", "code": 429, "type": "insufficient_quota"})
    server = start_router(models=ONE_OPENAI)
    response = requests.post(
        server.url("/v1/chat/completions"), json={"model": "any-model", "messages": HELLO, "stream": True}, timeout=10
    )
    assert response.status_code == 429, response.text
    assert response.json()["error"]["message"] == "quota gone"
