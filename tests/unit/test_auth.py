"""Client keys: who gets in, who gets a 401, and what stays open."""

from __future__ import annotations

import logging
import time

import pytest

import app.auth
from app.application import create_app
from app.auth import ClientKeys
from app.clients import client_name
from app.settings import ClientKey, Settings, SettingsError
from tests.support.api import assert_openai_error
from tests.support.processes import free_port

KEY = "rk-team-alpha-0123456789"
OTHER_KEY = "rk-team-beta-9876543210"


@pytest.fixture
def keyed(make_app):
    return make_app(api_keys=(KEY, OTHER_KEY)).test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_is_401_invalid_api_key_with_bearer_challenge(keyed):
    response = keyed.get("/v1/models")
    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong-key-0123456789", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}", KEY, "Bearer ", "Bearer"],
)
def test_wrong_or_malformed_key_is_401_and_never_echoed(keyed, authorization):
    response = keyed.post("/v1/chat/completions", json={}, headers={"Authorization": authorization})
    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert "wrong-key" not in response.get_data(as_text=True)


def test_every_configured_key_is_let_in(keyed):
    for key in (KEY, OTHER_KEY):
        assert keyed.get("/v1/models", headers=bearer(key)).status_code == 200
    # The scheme is case-insensitive, as in RFC 6750.
    assert keyed.get("/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_x_api_key_header_is_accepted_as_the_anthropic_sdks_send_it(keyed):
    assert keyed.get("/v1/models", headers={"x-api-key": KEY}).status_code == 200
    assert keyed.get("/v1/models", headers={"X-Api-Key": f" {OTHER_KEY} "}).status_code == 200
    # A non-bearer Authorization (e.g. a proxy's Basic credentials) does not hide x-api-key.
    assert keyed.get("/v1/models", headers={"Authorization": "Basic abc", "x-api-key": KEY}).status_code == 200
    error = assert_openai_error(keyed.get("/v1/models", headers={"x-api-key": "wrong-key-0123456789"}), 401)
    assert error["message"] == "Incorrect API key provided."
    assert "x-api-key" in assert_openai_error(keyed.get("/v1/models", headers={"x-api-key": " "}), 401)["message"]


def test_bearer_token_wins_over_x_api_key_when_both_are_sent(keyed):
    both = {"Authorization": f"Bearer {KEY}", "x-api-key": "wrong-key-0123456789"}
    assert keyed.get("/v1/models", headers=both).status_code == 200
    both = {"Authorization": "Bearer wrong-key-0123456789", "x-api-key": KEY}
    assert_openai_error(keyed.get("/v1/models", headers=both), 401)


def test_key_is_checked_before_the_body_is_read(keyed):
    response = keyed.post("/v1/chat/completions", data=b"not json", content_type="text/plain")
    assert_openai_error(response, 401)


def test_unknown_v1_path_needs_a_key_too(keyed):
    assert_openai_error(keyed.get("/v1/anything"), 401)
    assert_openai_error(keyed.get("/v1/anything", headers=bearer(KEY)), 404)


def test_health_and_metrics_stay_open_by_default(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_metrics_can_require_a_key(make_app):
    client = make_app(api_keys=(KEY,), metrics_require_key=True).test_client()
    assert_openai_error(client.get("/metrics"), 401)
    assert client.get("/metrics", headers=bearer(KEY)).status_code == 200
    assert client.get("/health").status_code == 200


def test_metrics_require_key_without_keys_stops_start_up():
    with pytest.raises(SettingsError, match="METRICS_REQUIRE_KEY"):
        Settings.from_env({"METRICS_REQUIRE_KEY": "true"})


def test_options_needs_no_key(keyed):
    response = keyed.options("/v1/chat/completions")
    assert response.status_code == 200
    assert "POST" in response.headers["Allow"]


def test_keys_from_a_file_let_in_and_comments_do_not(write_config, tmp_path):
    keys_file = tmp_path / "client-keys"
    keys_file.write_text(f"# alpha team\n{KEY}\n\n  {OTHER_KEY}  \n")
    base = write_config()
    settings = Settings.from_env(
        {
            "MODELS_FILE": base.models_file,
            "CREDENTIALS_FILE": base.credentials_file,
            "VENDORS_FILE": base.vendors_file,
            "ROUTER_API_KEYS_FILE": str(keys_file),
        }
    )
    client = create_app(settings).test_client()
    assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200
    assert client.get("/v1/models", headers=bearer(OTHER_KEY)).status_code == 200
    assert_openai_error(client.get("/v1/models", headers=bearer("# alpha team")), 401)
    assert_openai_error(client.get("/v1/models"), 401)


def test_open_router_warns_once_at_start_and_keyed_router_does_not(make_app, caplog):
    with caplog.at_level(logging.WARNING):
        make_app()
    warnings = [r for r in caplog.records if "ROUTER_API_KEYS is not set" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_app(api_keys=(KEY,))
    assert not [r for r in caplog.records if "ROUTER_API_KEYS" in r.getMessage()]


def test_open_router_needs_no_key(flask_client):
    assert flask_client.get("/v1/models").status_code == 200


def test_every_configured_key_is_compared_even_when_the_first_matches(monkeypatch):
    keys = ClientKeys(
        (ClientKey("one", "key-one-0123456789"), ClientKey("two", "key-two-0123456789"), ClientKey("three", "k-3-0123"))
    )
    compared = []
    real = app.auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(app.auth.hmac, "compare_digest", counting)
    assert keys.identify(b"key-one-0123456789").name == "one"
    assert len(compared) == 3
    compared.clear()
    assert keys.identify(b"nobody") is None
    assert len(compared) == 3


def test_identity_is_a_hash_distinct_per_key_and_never_the_key():
    keys = ClientKeys((ClientKey("alpha", KEY), ClientKey("beta", OTHER_KEY)))
    first, second = keys.identify(KEY.encode()), keys.identify(OTHER_KEY.encode())
    assert (first.name, second.name) == ("alpha", "beta")
    assert first.identity != second.identity
    assert KEY not in first.identity and OTHER_KEY not in second.identity
    assert keys.identify(KEY.encode()) == first  # stable, so instances sharing Redis agree


def test_a_named_key_is_known_by_its_name_and_bare_keys_by_their_position(make_app):
    flask_app = make_app(api_keys=(ClientKey("team-alpha", KEY), OTHER_KEY))
    seen = []

    @flask_app.get("/v1/whoami")
    def whoami():
        seen.append(client_name())
        return "ok"

    client = flask_app.test_client()
    client.get("/v1/whoami", headers=bearer(KEY))
    client.get("/v1/whoami", headers=bearer(OTHER_KEY))
    assert seen == ["team-alpha", "key-1"]


def test_a_key_never_shows_in_the_repr_of_its_client():
    assert KEY not in repr(ClientKey("alpha", KEY)) and KEY not in repr(Settings(api_keys=(KEY,)))


# -- failed key checks per address (AUTH_FAILURE_LIMIT) -----------------------------------------


def test_failed_key_checks_beyond_the_limit_get_429_with_retry_after_even_with_the_right_key(make_app):
    client = make_app(api_keys=(KEY,), auth_failure_limit="3/minute").test_client()
    wrong = bearer("rk-guess-0123456789")
    assert [client.get("/v1/models", headers=wrong).status_code for _ in range(3)] == [401, 401, 401]
    refused = client.get("/v1/models", headers=wrong)
    error = assert_openai_error(refused, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The right key from the same address is refused too: a guesser cannot tell a hit from a miss.
    assert_openai_error(client.get("/v1/models", headers=bearer(KEY)), 429)
    assert_openai_error(client.get("/v1/models"), 429)
    # Other addresses are not affected.
    other = {"REMOTE_ADDR": "10.9.9.9"}
    assert client.get("/v1/models", headers=bearer(KEY), environ_base=other).status_code == 200


def test_only_failures_count_towards_the_failed_check_limit(make_app):
    client = make_app(api_keys=(KEY,), auth_failure_limit="2/minute").test_client()
    for _ in range(5):
        assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200
    # A missing key is a failure as much as a wrong one.
    assert_openai_error(client.get("/v1/models"), 401)
    assert_openai_error(client.get("/v1/models", headers=bearer("rk-guess-0123456789")), 401)
    assert_openai_error(client.get("/v1/models", headers=bearer(KEY)), 429)


def test_the_failed_check_limit_leaves_open_routes_alone(make_app):
    client = make_app(api_keys=(KEY,), auth_failure_limit="1/minute").test_client()
    assert_openai_error(client.get("/v1/models"), 401)
    assert_openai_error(client.get("/v1/models"), 429)
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.options("/v1/models").status_code == 200


def test_the_failed_check_limit_window_ends_and_the_right_key_gets_in_again(make_app):
    client = make_app(api_keys=(KEY,), auth_failure_limit="1/second").test_client()
    assert_openai_error(client.get("/v1/models"), 401)
    refused = client.get("/v1/models", headers=bearer(KEY))
    assert_openai_error(refused, 429)
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)
    assert client.get("/v1/models", headers=bearer(KEY)).status_code == 200


def test_failed_checks_count_in_memory_while_redis_is_down_and_the_outage_is_logged_once(make_app, caplog):
    port = free_port()  # nobody listens there
    storage = f"redis://:hunter2-secret@127.0.0.1:{port}/0"
    with caplog.at_level(logging.INFO):
        client = make_app(api_keys=(KEY,), auth_failure_limit="2/minute", rate_limit_storage=storage).test_client()
        started = time.monotonic()
        statuses = [client.get("/v1/models").status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]  # still limited, per worker
    assert time.monotonic() - started < 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"auth-failure storage redis://:***@127.0.0.1:{port}/0 unreachable: "
        "failed key checks now count per worker process in memory"
    ]
    assert not any("hunter2-secret" in r.getMessage() for r in caplog.records)
