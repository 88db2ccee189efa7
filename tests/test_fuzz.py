"""Property-based fuzzing of the chat endpoint through the Flask test client, vendors mocked.

Whatever arrives (random bytes, a valid request with any field replaced by any JSON value, odd
Unicode, any Content-Type, any Authorization header), the answer is a 2xx or an OpenAI-shaped
4xx JSON error: never a 5xx, never HTML. The real-server run is in tests/integration.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import chat_body
from tests.test_api import completion

# Enough examples to find shape bugs, few enough that this file runs in a few seconds.
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VENDOR_URLS = ("http://openai.test/v1/chat/completions", "http://gemini.test/v1beta/openai/chat/completions")
KEY = "rk-fuzz-client-0123456789"

# Every code point, surrogates and controls included: JSON escapes what it cannot carry.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=12,
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "",
    ]
)
FULL_REQUEST = chat_body(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny", "name": "get"},
    ],
    tools=[{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}}}],
    tool_choice="auto",
    stream=False,
    stream_options={"include_usage": True},
)
# Every place a client could put a wrong type: (path of keys and indexes) in FULL_REQUEST.
FIELD_PATHS = [
    (),
    ("model",),
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 1, "content"),
    ("messages", 1, "content", 0),
    ("messages", 1, "content", 0, "type"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 2, "content"),
    ("messages", 2, "tool_calls"),
    ("messages", 2, "tool_calls", 0),
    ("messages", 2, "tool_calls", 0, "id"),
    ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("messages", 3, "tool_call_id"),
    ("messages", 3, "name"),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "description"),
    ("tools", 0, "function", "parameters"),
    ("tools", 0, "function", "strict"),
    ("tool_choice",),
    ("stream",),
    ("stream_options",),
    ("temperature",),
]


def replaced(path: tuple, value: Any) -> Any:
    """FULL_REQUEST with the value at ``path`` replaced by ``value`` (the whole body for ``()``)."""
    if not path:
        return value
    body = copy.deepcopy(FULL_REQUEST)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


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
def test_random_bytes_with_any_content_type(client, body, content_type):
    mock_vendors()
    assert_2xx_or_openai_4xx(client.post("/v1/chat/completions", data=body, content_type=content_type))


@FUZZ
@given(path=st.sampled_from(FIELD_PATHS), value=JSON_VALUES, query=st.sampled_from(["", "?vendor=openai", "?vendor=x"]))
@responses.activate
def test_any_field_replaced_by_any_json_value(client, path, value, query):
    mock_vendors()
    body = json.dumps(replaced(path, value))
    assert_2xx_or_openai_4xx(client.post(f"/v1/chat/completions{query}", data=body, content_type="application/json"))


@FUZZ
@given(text=ANY_TEXT, name=ANY_TEXT, model=ANY_TEXT, ascii_only=st.booleans())
@responses.activate
def test_odd_unicode_anywhere_in_the_text(client, text, name, model, ascii_only):
    mock_vendors()
    body = chat_body(model=model, messages=[{"role": "user", "content": text, "name": name}])
    # ensure_ascii=False writes lone surrogates as raw (invalid) UTF-8; both must be handled.
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")
    assert_2xx_or_openai_4xx(client.post("/v1/chat/completions", data=raw, content_type="application/json"))


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
