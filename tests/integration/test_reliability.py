"""Clients and vendors that are slow, silent or strange in ways that must not hold the router, over real sockets."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests

from tests.support.processes import RouterProcess, wait_until
from tests.support.prometheus import scrape
from tests.support.raw_http import json_post
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.scripted_vendor import ScriptedVendor, send_whole

HELLO = [{"role": "user", "content": "Hello"}]
CHAT = {"model": "any-model", "messages": HELLO}


def send_partial_body(server: RouterProcess, key: str | None = None) -> socket.socket:
    """Headers promising a 1000-byte JSON body, then 4 bytes of it, and nothing more."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n"
    )
    sock.sendall(head.encode() + b'{"mo')
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None, float | None]:
    """Everything the router sends within ``timeout``; when its first byte came and when it closed
    (seconds from now; None if it did not)."""
    started = time.monotonic()
    data, first, closed = b"", None, None
    while (left := started + timeout - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            piece = b""
        if not piece:
            closed = time.monotonic() - started
            break
        first = first if first is not None else time.monotonic() - started
        data += piece
    sock.close()
    return data, first, closed


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_a_request_body_that_stops_arriving_is_answered_408_within_the_client_body_timeout(start_router, fake):
    server = start_router(CLIENT_BODY_TIMEOUT="1")
    answer, first, closed = read_until_closed(send_partial_body(server), timeout=10)
    assert first is not None and 0.8 < first < 2.5, first
    status, body = status_and_json(answer)
    assert status == 408
    assert body == {
        "error": {
            "message": body["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
    # The rest of that body may still come: the connection cannot carry another request.
    assert closed is not None and closed < 3
    assert fake.requests() == []


def test_a_caller_without_a_valid_key_cannot_hold_the_connection_with_a_slow_body(start_router, fake):
    server = start_router(CLIENT_BODY_TIMEOUT="1", ROUTER_API_KEYS="the-right-key")
    answer, first, closed = read_until_closed(send_partial_body(server, key="a-wrong-key"), timeout=10)
    assert first is not None and first < 0.5  # refused at once, the body unread
    assert status_and_json(answer)[0] == 401
    assert closed is not None and closed < 2.5, closed


def test_slow_request_bodies_do_not_starve_other_clients(start_router, fake):
    server = start_router(CLIENT_BODY_TIMEOUT="1", WORKER_CONNECTIONS="4", ROUTER_API_KEYS="the-right-key")
    slow = [send_partial_body(server, key="the-right-key") for _ in range(4)]
    time.sleep(0.3)  # every greenlet of the worker now waits on a body
    try:
        started = time.monotonic()
        answer = requests.post(
            server.url("/v1/chat/completions"),
            json=CHAT,
            headers={"Authorization": "Bearer the-right-key"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 3
    finally:
        for sock in slow:
            sock.close()


def test_responses_metadata_nested_too_deep_is_refused_before_any_vendor_is_called(router, fake):
    metadata: dict = {"leaf": "x"}
    for _ in range(300):
        metadata = {"a": metadata}
    answer = requests.post(
        router.url("/v1/responses"), json={"model": "any-model", "input": "Hi", "metadata": metadata}, timeout=10
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "metadata"
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests() == []


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


def openai_keys(*keys: str) -> list[dict[str, str]]:
    return [{"platform": "openai", "type": "api-key", "value": key} for key in keys]


def test_shared_cooldowns_follow_the_key_not_its_position_in_the_credentials_file(start_router, fake, redis_server):
    # One namespace for all three, as if one deployment: only the keys tell them apart.
    shared = {"COOLDOWN_STORAGE": redis_server.url, "COOLDOWN_NAMESPACE": "itest", "COOLDOWN_SECONDS": "60"}
    models = [{"vendor": "openai", "model": "gpt-4o"}]
    first = start_router(
        models=models, credentials=openai_keys("sk-key-one-1111", "sk-key-two-2222"), MAX_ATTEMPTS="1", **shared
    )
    other_keys = start_router(models=models, credentials=openai_keys("sk-key-three-33", "sk-key-four-444"), **shared)
    reordered = start_router(models=models, credentials=openai_keys("sk-key-two-2222", "sk-key-one-1111"), **shared)
    wait_until(lambda: redis_server.client.pubsub_numsub("generative-api-router:cooldowns:db0")[0][1] == 3, 10)

    # The vendor refuses the first router's key: that key (alone, MAX_ATTEMPTS=1) cools down.
    refused = requests.post(first.url("/v1/chat/completions"), json={**CHAT, "x_fake": {"status": 401}}, timeout=10)
    assert refused.status_code == 401, refused.text
    refused_key = fake.requests()[0]["headers"]["authorization"].removeprefix("Bearer ")
    wait_until(lambda: scrape(reordered.base).value("router_cooling_combinations") == 1, timeout=5)

    # The router with that key at the other position skips that key, and only it.
    fake.reset()
    for _ in range(8):
        assert requests.post(reordered.url("/v1/chat/completions"), json=CHAT, timeout=10).status_code == 200
    used = {r["headers"]["authorization"].removeprefix("Bearer ") for r in fake.requests()}
    assert used == {"sk-key-one-1111", "sk-key-two-2222"} - {refused_key}
    # The router whose keys at the same positions are other keys cools nothing.
    assert scrape(other_keys.base).value("router_cooling_combinations") == 0


def byte_gaps(server: RouterProcess, path: str, body: dict, timeout: float = 30) -> tuple[bytes, list[float]]:
    """Stream ``body`` to ``path`` over a raw socket: everything received, and the seconds between
    one arrival of bytes and the next, from the first body bytes to the end."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.sendall(json_post(path, body, {"Connection": "close"}))
    received, arrivals = b"", []
    with sock:
        while piece := sock.recv(65536):
            received += piece
            if b"\r\n\r\n" in received:  # past the head: body bytes
                arrivals.append(time.monotonic())
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return received, [later - earlier for earlier, later in itertools.pairwise(arrivals)]


STREAMS = {
    "chat": ("/v1/chat/completions", {"model": "any-model", "messages": HELLO, "stream": True}, b"data: [DONE]"),
    "responses": ("/v1/responses", {"model": "any-model", "input": "Hi", "stream": True}, b"response.completed"),
}
# Each goes silent for 4 s after the first content event, in a way that once kept the router
# from sending its keep-alives.
SILENCES = {
    # The vendor's own keep-alive comments, more often than the router's, reset its clock.
    "vendor comments": {"stall_after": 1, "stall": 4, "comment_every": 0.4},
    # A close-delimited body (Connection: close) was read without any bound on a read.
    "close-delimited": {"stall_after": 1, "stall": 4, "framing": "close"},
    "close-delimited with comments": {"stall_after": 1, "stall": 4, "framing": "close", "comment_every": 0.4},
}


@pytest.mark.parametrize("silence", list(SILENCES))
@pytest.mark.parametrize("endpoint", list(STREAMS))
def test_keepalives_follow_the_time_since_the_clients_last_byte_whatever_the_vendor_sends(
    start_router, fake, endpoint, silence
):
    fake.behave("openai", chunks=3, **SILENCES[silence])
    server = start_router(models=[{"vendor": "openai", "model": "gpt-4o"}], STREAM_KEEPALIVE_SECONDS="1")
    path, body, end = STREAMS[endpoint]
    received, gaps = byte_gaps(server, path, body)
    assert end in received
    assert received.count(b": keep-alive") >= 3
    assert max(gaps) < 1.8, gaps


def odd_chunk_vendor(choices: object) -> ScriptedVendor:
    """A vendor whose every stream is a role chunk, then a chunk whose ``choices`` is ``choices``."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    role = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in (role, {**chunk, "choices": choices}))
    body += b"data: [DONE]\n\n"

    return ScriptedVendor(lambda handler: send_whole(handler, 200, "text/event-stream", body))


ODD_CHOICES = {"a number": 5, "true": True, "a string": "abc", "an object": {"index": 0}}


@pytest.mark.parametrize("choices", list(ODD_CHOICES.values()), ids=list(ODD_CHOICES))
def test_a_responses_stream_chunk_whose_choices_is_not_a_list_is_a_broken_answer(start_router, fake, choices):
    odd = odd_chunk_vendor(choices)
    try:
        server = start_router(
            models=[{"vendor": "openai", "model": "gpt-4o", "weight": 1000}, {"vendor": "gemini", "model": "flash"}],
            OPENAI_BASE_URL=odd.url,
            COOLDOWN_SECONDS="0",  # the second call meets the odd vendor again, after the first broke
        )
        body = {"input": "Hi", "stream": True}
        pinned = requests.post(server.url("/v1/responses"), json={**body, "model": "gpt-4o"}, timeout=10)
        assert pinned.status_code == 502, pinned.text
        assert pinned.json()["error"]["type"] == "upstream_error"
        assert "choices" in pinned.json()["error"]["message"]

        chosen = requests.post(server.url("/v1/responses"), json={**body, "model": "any-model"}, timeout=10)
        assert chosen.status_code == 200, chosen.text
        assert chosen.headers["X-Vendor-Source"] == "gemini"
        assert b"response.completed" in chosen.content
        assert odd.calls >= 2  # the odd vendor was tried first (weight 1000) and failed over
    finally:
        odd.stop()


def test_a_hedges_final_failure_does_not_end_the_healthy_attempt_still_running(start_router, fake):
    # The slow, healthy vendor is always tried first (weight); the hedge goes to one that refuses.
    server = start_router(
        models=[{"vendor": "openai", "model": "gpt-4o", "weight": 1000}, {"vendor": "gemini", "model": "flash"}],
        HEDGE_AFTER_SECONDS="0.3",
    )
    fake.behave("openai", delay=1.0)
    fake.behave("gemini", status=400)
    for _ in range(3):
        answer = requests.post(server.url("/v1/chat/completions"), json=CHAT, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Vendor-Source"] == "openai"
    assert {r["vendor"] for r in fake.requests()} == {"openai", "gemini"}, "the hedge was made, and refused"


def test_an_answer_with_error_null_beside_its_choices_is_an_answer(start_router, fake):
    server = start_router(models=[{"vendor": "openai", "model": "gpt-4o"}], COOLDOWN_SECONDS="30")
    fake.behave("openai", null_error=True)
    whole = requests.post(server.url("/v1/chat/completions"), json=CHAT, timeout=10)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["message"]["content"] == "Hello from openai! You said: Hello"
    streamed = requests.post(server.url("/v1/chat/completions"), json={**CHAT, "stream": True}, timeout=10)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), streamed.text
    # Nothing cooled: the one combination answers again at once.
    assert requests.post(server.url("/v1/chat/completions"), json=CHAT, timeout=10).status_code == 200
    assert len(fake.requests()) == 3


def test_a_pinned_model_whose_first_key_is_revoked_is_answered_with_its_other_key(start_router, fake):
    server = start_router(
        models=[{"vendor": "openai", "model": "gpt-4o"}],
        credentials=openai_keys("sk-revoked-0123456789abcdef", "sk-healthy-0123456789abcdef"),
    )
    fake.behave("openai", revoked_keys=["sk-revoked-0123456789abcdef"])

    def used() -> list[str]:
        return [r["headers"]["authorization"] for r in fake.requests()]

    def ask() -> None:
        answer = requests.post(server.url("/v1/chat/completions"), json={**CHAT, "model": "gpt-4o"}, timeout=10)
        assert answer.status_code == 200, answer.text

    # The weighted draw picks either key: ask until the revoked one has been tried (by chance,
    # 6 asks miss it once in 64 runs), then more asks must not try it again.
    for _ in range(40):
        ask()
        if "Bearer sk-revoked-0123456789abcdef" in used():
            break
    for _ in range(10):
        ask()
    assert used().count("Bearer sk-revoked-0123456789abcdef") == 1, "refused once, then cooled"


def lingering_vendor(linger: float) -> ScriptedVendor:
    """A vendor that sends a whole stream up to ``data: [DONE]``, then holds its body open ``linger`` s."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in events) + b"data: [DONE]\n\n"

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%X\r\n%b\r\n" % (len(body), body))
        handler.wfile.flush()
        time.sleep(linger)
        handler.wfile.write(b"0\r\n\r\n")

    return ScriptedVendor(answer)


def test_the_clients_stream_ends_with_done_even_when_the_vendor_holds_its_body_open(start_router, fake):
    lingering = lingering_vendor(linger=1.0)
    try:
        server = start_router(models=[{"vendor": "openai", "model": "gpt-4o"}], OPENAI_BASE_URL=lingering.url)
        started = time.monotonic()
        answer = requests.post(server.url("/v1/chat/completions"), json={**CHAT, "stream": True}, timeout=10)
        ended = time.monotonic() - started
        assert answer.status_code == 200 and answer.text.rstrip().endswith("data: [DONE]"), answer.text
        # The router read the vendor's end of body (up to a quarter second) only after the client
        # had its own: the client's response ended at once.
        assert ended < 0.2, ended
    finally:
        lingering.stop()
