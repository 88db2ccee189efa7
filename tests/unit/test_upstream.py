"""The vendor client in isolation, with `responses` (or a scripted socket) standing in for the vendor."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import responses

from app.catalog import Combination, Credential, Model, Vendor
from app.errors import UpstreamError, UpstreamTimeout
from app.upstream import USER_AGENT, Upstream

VENDOR = Vendor("openai", "http://openai.test/v1")
SECRET = "sk-upstream-test-0123456789"
COMBINATION = Combination(VENDOR, Credential("openai", "openai#1", SECRET), Model("openai", "gpt-4o"))


@pytest.fixture
def upstream():
    return Upstream({"openai": VENDOR}, connect_timeout=1, read_timeout=2, pool_size=10)


@responses.activate
def test_post_sends_only_the_routers_own_headers(upstream):
    responses.post(VENDOR.chat_url, json={"ok": True})
    response = upstream.post(COMBINATION, VENDOR.chat_url, b'{"model":"gpt-4o"}', stream=False)
    assert response.read_all() == b'{"ok": true}'
    headers = responses.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT
    assert "Cookie" not in headers


@responses.activate
def test_stream_asks_for_event_stream_uncompressed(upstream):
    responses.post(VENDOR.chat_url, body="data: [DONE]\n\n", content_type="text/event-stream")
    response = upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=True)
    assert response.read_some() == b"data: [DONE]\n\n"
    headers = responses.calls[0].request.headers
    assert headers["Accept"] == "text/event-stream"
    assert headers["Accept-Encoding"] == "identity"


@responses.activate
def test_cookies_from_one_call_never_ride_on_the_next(upstream):
    responses.post(VENDOR.chat_url, json={}, headers={"Set-Cookie": "tenant=a; Path=/"})
    upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=False).read_all()
    upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=False).read_all()
    assert "Cookie" not in responses.calls[1].request.headers


@responses.activate
def test_redirects_are_not_followed(upstream):
    responses.post(VENDOR.chat_url, status=307, headers={"Location": "http://elsewhere.test/"})
    assert upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=False).status == 307
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("failure", "kind", "words"),
    [
        (
            requests.exceptions.ConnectTimeout("http://openai.test/v1?x"),
            UpstreamTimeout,
            "could not be reached within 1 s",
        ),
        (requests.exceptions.ReadTimeout("http://openai.test/v1"), UpstreamTimeout, "sent no answer within 2 s"),
        (requests.exceptions.ConnectionError(ConnectionRefusedError()), UpstreamError, "refused the connection"),
        (requests.exceptions.SSLError("bad cert"), UpstreamError, "failed the TLS handshake"),
    ],
)
@responses.activate
def test_network_failures_name_vendor_and_model_but_no_url_or_key(upstream, failure, kind, words):
    responses.post(VENDOR.chat_url, body=failure)
    with pytest.raises(kind) as caught:
        upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=False)
    message = caught.value.message
    assert message.startswith("Vendor openai (model gpt-4o) ")
    assert words in message
    assert "openai.test" not in message and SECRET not in message


@responses.activate
def test_each_call_may_wait_less_than_the_configured_read_timeout(upstream):
    responses.post(VENDOR.chat_url, body=requests.exceptions.ReadTimeout("http://openai.test/v1"))
    with pytest.raises(UpstreamTimeout) as caught:
        upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=False, read_timeout=0.25)
    assert "sent no answer within 0.25 s" in caught.value.message


@responses.activate
def test_retry_after_in_seconds_or_as_an_http_date(upstream):
    responses.post(VENDOR.chat_url, status=429, headers={"Retry-After": "7"})
    assert upstream.post(COMBINATION, VENDOR.chat_url, b"{}", stream=False).retry_after == 7.0


# -- a streamed body read from a real socket ------------------------------------------------------

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class ByteByByteVendor:
    """A one-connection vendor on a real socket: answers each request on it with the next scripted
    answer, sent in pieces with a pause after each (so every piece arrives in a read of its own),
    and closes the connection after the last answer."""

    def __init__(self, answers: list[list[bytes]], pause: float = 0.02) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1/chat/completions"
        self.requests_on_first_connection = 0
        self._thread = threading.Thread(target=self._serve, args=(answers, pause), daemon=True)
        self._thread.start()

    def _serve(self, answers: list[list[bytes]], pause: float) -> None:
        conn, _ = self._listener.accept()
        with conn:
            for answer in answers:
                request = b""
                while b"\r\n\r\n" not in request or not request.endswith(b"{}"):
                    request += conn.recv(65536)
                self.requests_on_first_connection += 1
                for piece in answer:
                    conn.sendall(piece)
                    time.sleep(pause)

    def close(self) -> None:
        self._listener.close()


def byte_pieces(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def read_stream(response, within: float | None = None) -> tuple[bytes, int]:
    """The whole body, and how many reads found nothing within ``within`` seconds."""
    body, silent = b"", 0
    while (data := response.read_some(within)) != b"":
        if data is None:
            silent += 1
        else:
            body += data
    return body, silent


def test_chunked_stream_split_at_every_byte_is_decoded_whole_and_its_connection_reused(upstream):
    events = b'data: {"a":1}\n\n' + 'data: {"b":"é"}\n\n'.encode()
    # A chunk extension, a chunk split across reads at every byte, a trailer after the last chunk.
    framed = b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (
        15,
        events[:15],
        len(events) - 15,
        events[15:],
    )
    whole = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"]
    vendor = ByteByByteVendor([[CHUNKED_HEAD, *byte_pieces(framed)], whole], pause=0.002)
    try:
        url = vendor.url
        response = upstream.post(COMBINATION, url, b"{}", stream=True)
        assert read_stream(response) == (events, 0)
        # The body ended cleanly, so the connection went back to the pool: the next call uses it.
        assert upstream.post(COMBINATION, url, b"{}", stream=False).read_all() == b"{}"
        assert vendor.requests_on_first_connection == 2
    finally:
        vendor.close()


def test_a_read_with_a_bound_returns_none_during_silence_and_the_stream_goes_on(upstream):
    event = b"data: {}\n\n"
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    vendor = ByteByByteVendor([[CHUNKED_HEAD + chunk, chunk, b"0\r\n\r\n"]], pause=0.3)
    try:
        response = upstream.post(COMBINATION, vendor.url, b"{}", stream=True)
        body, silent = read_stream(response, within=0.05)
        assert body == event * 2
        assert silent >= 4  # two pauses of 0.3 s, each several bounded reads long
    finally:
        vendor.close()


def test_a_chunked_stream_cut_mid_chunk_is_a_dropped_connection(upstream):
    vendor = ByteByByteVendor([[CHUNKED_HEAD + b'20\r\ndata: {"cut']], pause=0.05)
    try:
        response = upstream.post(COMBINATION, vendor.url, b"{}", stream=True)
        with pytest.raises(UpstreamError, match="dropped the connection mid-stream"):
            read_stream(response)
    finally:
        vendor.close()
