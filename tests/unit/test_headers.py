"""CORS (off by default) and the security headers on every answer."""

from __future__ import annotations

import pytest

from app.settings import Settings, SettingsError
from tests.support.api import chat_body

APP_ORIGIN = "https://app.example.com"
KEY = "rk-browser-client-0123456789"


def preflight(client, origin: str, path: str = "/v1/chat/completions"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )


def test_cors_is_off_by_default(flask_client):
    response = preflight(flask_client, APP_ORIGIN)
    assert "Access-Control-Allow-Origin" not in response.headers
    response = flask_client.get("/v1/models", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_preflight_from_an_allowed_origin_needs_no_key(make_app):
    client = make_app(cors_origins=(APP_ORIGIN,), api_keys=(KEY,)).test_client()
    response = preflight(client, APP_ORIGIN)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    assert "x-stainless-os" in response.headers["Access-Control-Allow-Headers"]
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_simple_request_from_an_allowed_origin_is_readable_and_still_needs_its_key(make_app):
    client = make_app(cors_origins=(APP_ORIGIN,), api_keys=(KEY,)).test_client()
    refused = client.get("/v1/models", headers={"Origin": APP_ORIGIN})
    assert refused.status_code == 401
    # The browser may read the 401 (so the app can tell the user), but gets no data.
    assert refused.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    answered = client.get("/v1/models", headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert answered.status_code == 200
    assert answered.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "X-Request-ID" in answered.headers["Access-Control-Expose-Headers"]


def test_other_origins_get_no_cors_headers(make_app):
    client = make_app(cors_origins=(APP_ORIGIN,)).test_client()
    assert "Access-Control-Allow-Origin" not in preflight(client, "https://evil.example").headers
    answered = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in answered.headers
    assert "Origin" in answered.headers["Vary"]


def test_star_allows_any_origin(make_app):
    client = make_app(cors_origins=("*",)).test_client()
    assert preflight(client, "https://anywhere.example").headers["Access-Control-Allow-Origin"] == "*"
    answered = client.get("/v1/models", headers={"Origin": "https://anywhere.example"})
    assert answered.headers["Access-Control-Allow-Origin"] == "*"


def test_only_the_api_is_offered_to_browsers(make_app):
    client = make_app(cors_origins=("*",)).test_client()
    for path in ("/health", "/metrics"):
        assert "Access-Control-Allow-Origin" not in client.get(path, headers={"Origin": APP_ORIGIN}).headers


@pytest.mark.parametrize("value", ["app.example.com", "https://app.example.com/path", "https://a.example.com,ftp://x"])
def test_a_bad_cors_origin_stops_start_up(value):
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": value})


def test_cors_origins_setting_reads_a_comma_separated_list():
    settings = Settings.from_env({"CORS_ORIGINS": "https://a.example.com, http://localhost:3000"})
    assert settings.cors_origins == ("https://a.example.com", "http://localhost:3000")


def test_nosniff_on_every_kind_of_answer(make_app):
    client = make_app(api_keys=(KEY,), rate_limit="2/minute", max_body_bytes=100).test_client()
    auth = {"Authorization": f"Bearer {KEY}"}
    answers = [
        client.get("/health"),
        client.get("/metrics"),
        client.get("/v1/models"),
        client.get("/v1/models", headers=auth),
        client.post("/v1/chat/completions", json=chat_body(pad="x" * 200), headers=auth),
        client.get("/v1/models", headers=auth),
        client.get("/nowhere"),
        client.delete("/health"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 401, 200, 413, 429, 404, 405]
    for answer in answers:
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
