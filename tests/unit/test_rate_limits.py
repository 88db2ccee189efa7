"""Rate limits with the in-memory store, through the Flask test client (Redis: tests/integration)."""

from __future__ import annotations

import logging
import time

import pytest
import responses

from app.settings import ClientKey, Settings, SettingsError
from tests.support.api import OPENAI_URL, assert_openai_error, chat_body, completion
from tests.support.processes import free_port

KEY = "rk-limited-client-0123456789"
OTHER_KEY = "rk-other-client-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_exactly_the_configured_number_of_calls_pass_then_429(make_app):
    client = make_app(rate_limit="3/minute").test_client()
    statuses = [client.get("/v1/models").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_429_is_openai_shaped_with_retry_after_and_rate_limit_headers(make_app):
    client = make_app(rate_limit="2/minute").test_client()
    first = client.get("/v1/models")
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    reset = int(first.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 62
    assert "Retry-After" not in first.headers  # only a refusal says when to come back
    client.get("/v1/models")
    refused = client.get("/v1/models")
    error = assert_openai_error(refused, 429)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert "2 per 1 minute" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.headers["X-RateLimit-Remaining"] == "0"


@responses.activate
def test_chat_and_models_draw_from_one_budget(make_app):
    responses.post(OPENAI_URL, json=completion())
    client = make_app(rate_limit="3/minute").test_client()
    assert client.post("/v1/chat/completions?vendor=openai", json=chat_body()).status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models/gpt-4o").status_code == 200
    assert_openai_error(client.post("/v1/chat/completions?vendor=openai", json=chat_body()), 429)
    assert len(responses.calls) == 1  # the refused call never reached the vendor


def test_responses_and_embeddings_draw_from_the_same_budget_as_chat(make_app):
    client = make_app(rate_limit="2/minute").test_client()
    # Refused by validation, so no vendor is needed, yet each call uses up the budget.
    assert client.post("/v1/responses", json={"input": []}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 400
    for path, body in (
        ("/v1/responses", {"input": "Hi"}),
        ("/v1/embeddings", {"input": "Hi"}),
        ("/v1/chat/completions", chat_body()),
    ):
        assert_openai_error(client.post(path, json=body), 429)


def test_health_metrics_and_preflights_are_never_limited(make_app):
    client = make_app(rate_limit="1/minute").test_client()
    for _ in range(5):
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.options("/v1/models").status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert_openai_error(client.get("/v1/models"), 429)


def test_each_client_key_has_its_own_budget(make_app):
    client = make_app(rate_limit="2/minute", api_keys=(KEY, OTHER_KEY)).test_client()
    assert [client.get("/v1/models", headers=bearer(KEY)).status_code for _ in range(3)] == [200, 200, 429]
    assert [client.get("/v1/models", headers=bearer(OTHER_KEY)).status_code for _ in range(3)] == [200, 200, 429]


def test_a_client_with_its_own_limit_uses_it_and_the_others_use_rate_limit(make_app):
    keys = (ClientKey("batch", KEY, rate_limit="1/minute"), ClientKey("web", OTHER_KEY))
    client = make_app(rate_limit="3/minute", api_keys=keys).test_client()
    batch = [client.get("/v1/models", headers=bearer(KEY)) for _ in range(2)]
    assert [response.status_code for response in batch] == [200, 429]
    assert batch[0].headers["X-RateLimit-Limit"] == "1"
    assert "1 per 1 minute" in assert_openai_error(batch[1], 429)["message"]
    web = [client.get("/v1/models", headers=bearer(OTHER_KEY)) for _ in range(4)]
    assert [response.status_code for response in web] == [200, 200, 200, 429]
    assert web[0].headers["X-RateLimit-Limit"] == "3"


def test_a_client_limit_alone_limits_only_that_client(make_app):
    keys = (ClientKey("batch", KEY, rate_limit="2/minute"), ClientKey("web", OTHER_KEY))
    client = make_app(api_keys=keys).test_client()
    assert [client.get("/v1/models", headers=bearer(KEY)).status_code for _ in range(3)] == [200, 200, 429]
    for _ in range(10):
        response = client.get("/v1/models", headers=bearer(OTHER_KEY))
        assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers


def test_wrong_keys_are_refused_before_they_can_use_a_budget(make_app):
    client = make_app(rate_limit="1/minute", api_keys=(KEY,)).test_client()
    for _ in range(3):
        assert_openai_error(client.get("/v1/models", headers=bearer("rk-guess-0123456789")), 401)
    assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200


def test_with_keys_off_each_client_address_has_its_own_budget(make_app):
    client = make_app(rate_limit="1/minute").test_client()
    assert client.get("/v1/models", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    assert client.get("/v1/models", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    assert_openai_error(client.get("/v1/models", environ_base={"REMOTE_ADDR": "10.0.0.1"}), 429)


def test_forwarded_for_is_ignored_without_trusted_proxies(make_app):
    client = make_app(rate_limit="1/minute").test_client()
    assert client.get("/v1/models", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    # A client cannot buy a fresh budget by inventing an address.
    assert_openai_error(client.get("/v1/models", headers={"X-Forwarded-For": "198.51.100.2"}), 429)


def test_forwarded_for_names_the_client_behind_trusted_proxies(make_app):
    client = make_app(rate_limit="1/minute", trusted_proxies=1).test_client()
    nginx = {"REMOTE_ADDR": "127.0.0.1"}
    assert client.get("/v1/models", headers={"X-Forwarded-For": "198.51.100.1"}, environ_base=nginx).status_code == 200
    assert client.get("/v1/models", headers={"X-Forwarded-For": "198.51.100.2"}, environ_base=nginx).status_code == 200
    refused = client.get("/v1/models", headers={"X-Forwarded-For": "198.51.100.1"}, environ_base=nginx)
    assert_openai_error(refused, 429)
    # Only the last hop is trusted: an address the client put in front does not count.
    spoofed = client.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}, environ_base=nginx)
    assert_openai_error(spoofed, 429)


def test_several_limits_apply_together(make_app):
    client = make_app(rate_limit="2/second;3/minute").test_client()
    statuses = []
    for _ in range(4):
        statuses.append(client.get("/v1/models").status_code)
        time.sleep(0.55)  # at most 2 per second either way
    assert statuses == [200, 200, 200, 429]


def test_no_rate_limit_means_no_headers_and_no_limit(flask_client):
    for _ in range(20):
        response = flask_client.get("/v1/models")
        assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers


@pytest.mark.parametrize("value", ["60 a minute", "5/fortnight", "0/minute", "minute"])
def test_a_bad_rate_limit_stops_start_up_naming_the_variable(value):
    with pytest.raises(SettingsError, match="RATE_LIMIT"):
        Settings.from_env({"RATE_LIMIT": value})


def test_an_unknown_storage_stops_start_up_without_its_password(make_app):
    with pytest.raises(SettingsError, match="RATE_LIMIT_STORAGE") as caught:
        make_app(rate_limit="1/minute", rate_limit_storage="nosuch://user:hunter2-secret@host/0")
    assert "hunter2-secret" not in str(caught.value)


def test_unreachable_redis_is_reported_and_limits_fall_back_to_memory(make_app, caplog):
    storage = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"  # nobody listens there
    with caplog.at_level(logging.INFO):
        client = make_app(rate_limit="2/minute", rate_limit_storage=storage).test_client()
        started = time.monotonic()
        statuses = [client.get("/v1/models").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # served, and still limited, per worker
    assert time.monotonic() - started < 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors  # once at start, once when the first call found it down
    assert "does not answer" in errors[0] and "unreachable" in errors[1]
    assert all("redis://:***@127.0.0.1" in message for message in errors)
    assert not any("hunter2-secret" in r.getMessage() or r.exc_info for r in caplog.records)
