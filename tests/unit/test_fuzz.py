"""Property-based fuzzing of the chat endpoint through the Flask test client, vendors mocked.

Whatever arrives (random bytes, a valid request with any field replaced by any JSON value, odd
Unicode, any Content-Type, any Authorization header), the answer is a 2xx or an OpenAI-shaped
4xx JSON error: never a 5xx, never HTML. The real-server run is in tests/integration.
"""

from __future__ import annotations

import json

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.api import chat_body, completion
from tests.support.fuzz import ANY_TEXT, CONTENT_TYPES, FIELD_PATHS, JSON_VALUES, replaced

# Enough examples to find shape bugs, few enough that this file runs in a few seconds.
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VENDOR_URLS = ("http://openai.test/v1/chat/completions", "http://gemini.test/v1beta/openai/chat/completions")
KEY = "rk-fuzz-client-0123456789"


def vendor_answer(request) -> tuple[int, dict, str]:
    """The mocked vendor: a stream when asked for one, a whole completion otherwise."""
    if json.loads(request.body).get("stream") is True:
        chunk = {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "ok"}}]}
        return 200, {"Content-Type": "text/event-stream"}, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    return 200, {"Content-Type": "application/json"}, json.dumps(completion())


def mock_vendors() -> None:
    for url in VENDOR_URLS:
        responses.add_callback(responses.POST, url, callback=vendor_answer)


def assert_2xx_or_openai_4xx(response) -> None:
    body = response.get_data()  # runs a stream to its end
    assert response.status_code < 500, body[:300]
    if response.status_code < 300:
        assert response.mimetype in ("application/json", "text/event-stream")
        return
    assert response.mimetype == "application/json", body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]


@FUZZ
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
@responses.activate
def test_random_bytes_with_any_content_type(flask_client, body, content_type):
    mock_vendors()
    assert_2xx_or_openai_4xx(flask_client.post("/v1/chat/completions", data=body, content_type=content_type))


@FUZZ
@given(path=st.sampled_from(FIELD_PATHS), value=JSON_VALUES, query=st.sampled_from(["", "?vendor=openai", "?vendor=x"]))
@responses.activate
def test_any_field_replaced_by_any_json_value(flask_client, path, value, query):
    mock_vendors()
    body = json.dumps(replaced(path, value))
    assert_2xx_or_openai_4xx(
        flask_client.post(f"/v1/chat/completions{query}", data=body, content_type="application/json")
    )


@FUZZ
@given(text=ANY_TEXT, name=ANY_TEXT, model=ANY_TEXT, ascii_only=st.booleans())
@responses.activate
def test_odd_unicode_anywhere_in_the_text(flask_client, text, name, model, ascii_only):
    mock_vendors()
    body = chat_body(model=model, messages=[{"role": "user", "content": text, "name": name}])
    # ensure_ascii=False writes lone surrogates as raw (invalid) UTF-8; both must be handled.
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")
    assert_2xx_or_openai_4xx(flask_client.post("/v1/chat/completions", data=raw, content_type="application/json"))


@FUZZ
@given(
    authorization=st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60),
        st.builds(
            lambda before, after: before + KEY + after,
            st.sampled_from(["Bearer ", "bearer  ", "Basic ", ""]),
            st.sampled_from(["", " ", "x", "\t"]),
        ),
    )
)
def test_any_authorization_header_is_401_unless_it_carries_the_key(keyed_client, authorization):
    response = keyed_client.get("/v1/models", headers={"Authorization": authorization})
    assert response.status_code in (200, 401)
    if response.status_code == 200:
        assert KEY in authorization
    else:
        assert response.get_json()["error"]["code"] == "invalid_api_key"


@pytest.fixture
def keyed_client(make_app):
    """One keyed app for all examples of a test: building one per example would dominate the time."""
    # Hundreds of wrong keys from one address: the failed-check limit (tested elsewhere) is lifted.
    return make_app(api_keys=(KEY,), auth_failure_limit="1000000/minute").test_client()
