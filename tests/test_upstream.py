"""The vendor client in isolation, with `responses` standing in for the vendor."""

from __future__ import annotations

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
