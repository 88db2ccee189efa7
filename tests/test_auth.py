"""Client keys: who gets in, who gets a 401, and what stays open."""

from __future__ import annotations

import logging

import pytest

import app.auth
from app import create_app
from app.auth import ClientKeys
from app.settings import Settings, SettingsError
from tests.test_api import assert_openai_error

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


def test_open_router_needs_no_key(client):
    assert client.get("/v1/models").status_code == 200


def test_every_configured_key_is_compared_even_when_the_first_matches(monkeypatch):
    keys = ClientKeys(("key-one-0123456789", "key-two-0123456789", "key-three-0123456"))
    compared = []
    real = app.auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(app.auth.hmac, "compare_digest", counting)
    assert keys.identify(b"key-one-0123456789") is not None
    assert len(compared) == 3
    compared.clear()
    assert keys.identify(b"nobody") is None
    assert len(compared) == 3


def test_identity_is_a_hash_distinct_per_key_and_never_the_key():
    keys = ClientKeys((KEY, OTHER_KEY))
    first, second = keys.identify(KEY.encode()), keys.identify(OTHER_KEY.encode())
    assert first and second and first != second
    assert KEY not in first and OTHER_KEY not in second
    assert keys.identify(KEY.encode()) == first  # stable, so instances sharing Redis agree
