"""The HTTP surface through Flask's test client, with vendors mocked by `responses`."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
import responses

from tests.support.api import GEMINI_URL, OPENAI_URL, assert_openai_error, chat_body, completion
from tests.support.keys import GEMINI_KEY, OPENAI_KEY
from tests.support.prometheus import parse


def test_health_is_plain_ok(flask_client):
    response = flask_client.get("/health")
    assert response.status_code == 200
    assert response.data == b"OK"
    assert response.mimetype == "text/plain"


def test_models_lists_every_configured_model(flask_client):
    data = flask_client.get("/v1/models").get_json()
    assert data["object"] == "list"
    assert [(m["id"], m["owned_by"], m["object"]) for m in data["data"]] == [
        ("gpt-4o", "openai", "model"),
        ("gemini-2.0-flash", "gemini", "model"),
    ]
    assert all(isinstance(m["created"], int) for m in data["data"])


def test_models_vendor_filter_and_empty_list_not_null(flask_client):
    assert [m["id"] for m in flask_client.get("/v1/models?vendor=gemini").get_json()["data"]] == ["gemini-2.0-flash"]
    assert flask_client.get("/v1/models?vendor=nobody").get_json() == {"object": "list", "data": []}


def test_model_retrieval(flask_client):
    assert flask_client.get("/v1/models/gpt-4o").get_json()["owned_by"] == "openai"
    assert_openai_error(flask_client.get("/v1/models/nope"), 404, param="model")


def test_models_lists_aliases_after_models_owned_by_the_router(make_app):
    models = [
        {"vendor": "openai", "model": "gpt-4o", "aliases": ["smart"]},
        {"vendor": "gemini", "model": "gemini-2.0-flash", "aliases": ["fast"]},
        {"vendor": "openai", "model": "gpt-4o-mini", "aliases": ["fast"]},
        {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"},
    ]
    client = make_app(models=models).test_client()
    listed = [(m["id"], m["owned_by"]) for m in client.get("/v1/models").get_json()["data"]]
    assert listed == [
        ("gpt-4o", "openai"),
        ("gemini-2.0-flash", "gemini"),
        ("gpt-4o-mini", "openai"),
        ("text-embedding-3-small", "openai"),
        ("smart", "router"),
        ("fast", "router"),
    ]
    gemini = [m["id"] for m in client.get("/v1/models?vendor=gemini").get_json()["data"]]
    assert gemini == ["gemini-2.0-flash", "fast"]
    alias = client.get("/v1/models/fast").get_json()
    assert alias == {"id": "fast", "object": "model", "created": alias["created"], "owned_by": "router"}


@pytest.mark.parametrize("header", [{"anthropic-version": "2023-06-01"}, {"x-api-key": "any"}])
def test_models_answer_anthropic_list_shape_to_anthropic_clients(make_app, header):
    models = [
        {"vendor": "openai", "model": "gpt-4o", "aliases": ["claude-opus-5-5"]},
        {"vendor": "gemini", "model": "gemini-2.0-flash"},
        {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding", "aliases": ["embed"]},
    ]
    client = make_app(models=models).test_client()
    listed = client.get("/v1/models", headers=header).get_json()
    created = listed["data"][0]["created_at"]
    # RFC 3339 in UTC, the models file's modification time, as "created" is in OpenAI's shape.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    openai_created = client.get("/v1/models").get_json()["data"][0]["created"]
    assert datetime.fromisoformat(created).timestamp() == openai_created
    # Embedding models cannot answer /v1/messages, so Anthropic clients are not shown them.
    assert listed == {
        "data": [
            {"type": "model", "id": name, "display_name": name, "created_at": created}
            for name in ("gpt-4o", "gemini-2.0-flash", "claude-opus-5-5")
        ],
        "has_more": False,
        "first_id": "gpt-4o",
        "last_id": "claude-opus-5-5",
    }
    one = client.get("/v1/models/claude-opus-5-5", headers=header).get_json()
    assert one == {"type": "model", "id": "claude-opus-5-5", "display_name": "claude-opus-5-5", "created_at": created}
    assert client.get("/v1/models?vendor=nobody", headers=header).get_json() == {
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }


@responses.activate
def test_image_request_skips_models_without_image_support(make_app):
    models = [
        {"vendor": "openai", "model": "gpt-4o"},
        {"vendor": "gemini", "model": "gemini-2.0-flash", "config": {"support_streaming": True}},
    ]
    client = make_app(models=models).test_client()
    responses.post(OPENAI_URL, json=completion())
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    for _ in range(10):
        response = client.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": image}]))
        assert response.headers["X-Model-Source"] == "gpt-4o"
    refused = client.post(
        "/v1/chat/completions?vendor=gemini", json=chat_body(messages=[{"role": "user", "content": image}])
    )
    error = assert_openai_error(refused, 400, param="messages")
    assert error["message"] == "No configured model of vendor gemini supports images"
    assert error["type"] == "invalid_request_error"


@responses.activate
def test_chat_forwards_with_vendor_key_and_answers_requested_model(flask_client):
    responses.post(OPENAI_URL, json=completion())
    response = flask_client.post(
        "/v1/chat/completions?vendor=openai", json=chat_body(model="my-model", temperature=0.3)
    )
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["model"] == "my-model"
    assert answer["choices"][0]["message"]["content"] == "Hi there"
    assert response.headers["X-Vendor-Source"] == "openai"
    assert response.headers["X-Model-Source"] == "gpt-4o"
    assert response.headers["X-Router-Attempts"] == "1"
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert json.loads(sent.body) == chat_body(model="gpt-4o", temperature=0.3)


@responses.activate
def test_stream_through_the_service(flask_client):
    events = [
        {"id": "g1", "created": 5, "model": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"id": "g2", "created": 6, "model": "x", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"id": "g3", "created": 7, "model": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    sse = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events) + "data: [DONE]\r\n\r\n"
    responses.post(GEMINI_URL, body=sse, content_type="text/event-stream")
    response = flask_client.post("/v1/chat/completions?vendor=gemini", json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    blocks = response.get_data(as_text=True).split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    assert [c["id"] for c in chunks] == ["g1", "g1", "g1"]
    assert [c["created"] for c in chunks] == [5, 5, 5]
    assert {c["model"] for c in chunks} == {"any-model"}
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {GEMINI_KEY}"


@responses.activate
def test_failover_to_another_combination_after_a_5xx(flask_client):
    responses.post(OPENAI_URL, status=503, json={"error": {"message": "overloaded"}})
    responses.post(GEMINI_URL, json=completion())
    for _ in range(3):
        response = flask_client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200
    # The failing combination cools down: after the first failover it is not tried again.
    assert len([c for c in responses.calls if c.request.url == OPENAI_URL]) <= 1


@responses.activate
def test_rate_limit_from_every_vendor_stays_429_with_retry_after(flask_client):
    for url in (OPENAI_URL, GEMINI_URL):
        responses.post(url, status=429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "7"})
    response = flask_client.post("/v1/chat/completions", json=chat_body())
    error = assert_openai_error(response, 429)
    assert error["message"] == "slow down"
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-Router-Attempts"] == "2"


@responses.activate
def test_gemini_array_error_is_reshaped_and_not_retried(flask_client):
    responses.post(
        GEMINI_URL,
        status=400,
        json=[{"error": {"code": 400, "message": 'Unknown name "x"', "status": "INVALID_ARGUMENT"}}],
    )
    response = flask_client.post("/v1/chat/completions?vendor=gemini", json=chat_body())
    error = assert_openai_error(response, 400)
    assert error == {
        "message": 'Unknown name "x"',
        "type": "invalid_request_error",
        "param": None,
        "code": "INVALID_ARGUMENT",
    }
    assert len(responses.calls) == 1


@responses.activate
def test_html_from_a_vendor_becomes_json(flask_client):
    responses.post(OPENAI_URL, status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    response = flask_client.post("/v1/chat/completions?vendor=openai", json=chat_body())
    assert_openai_error(response, 502)


@responses.activate
def test_unreachable_vendor_is_a_502_naming_vendor_and_model_not_key(flask_client):
    response = flask_client.post("/v1/chat/completions?vendor=openai", json=chat_body())  # nothing mocked: refused
    error = assert_openai_error(response, 502)
    assert "openai" in error["message"] and "gpt-4o" in error["message"]
    assert OPENAI_KEY not in response.get_data(as_text=True)
    assert "openai.test" not in error["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, None),
        ({"data": "", "content_type": "application/json"}, 400, None),
        ({"data": "[1, 2]", "content_type": "application/json"}, 400, None),
        ({"data": '"text"', "content_type": "application/json"}, 400, None),
        ({"data": "\xff\xfe", "content_type": "application/json"}, 400, None),
        ({"data": "model=x", "content_type": "application/x-www-form-urlencoded"}, 415, None),
        ({"data": "{}"}, 415, None),
        ({"json": {"messages": []}}, 400, "messages"),
        ({"json": chat_body(stream="yes")}, 400, "stream"),
        (
            {"json": chat_body(tools=[{"type": "function", "function": {"name": "no spaces"}}])},
            400,
            "tools[0].function.name",
        ),
        ({"json": chat_body(messages=[{"role": "robot", "content": "x"}])}, 400, "messages[0].role"),
    ],
)
def test_bad_input_is_a_clear_json_error(flask_client, kwargs, status, param):
    assert_openai_error(flask_client.post("/v1/chat/completions", **kwargs), status, param)


def test_body_over_the_limit_is_413(make_app):
    client = make_app(max_body_bytes=1000).test_client()
    response = client.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": "x" * 2000}]))
    assert_openai_error(response, 413)


def test_unknown_route_and_wrong_method_are_json(flask_client):
    assert_openai_error(flask_client.get("/v2/nothing"), 404)
    response = flask_client.get("/v1/chat/completions")
    assert_openai_error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_configured_model_of_another_vendor_is_400(flask_client):
    assert_openai_error(
        flask_client.post("/v1/chat/completions?vendor=gemini", json=chat_body(model="gpt-4o")), 400, "model"
    )


def test_no_credentials_is_503_naming_the_missing_file(make_app):
    client = make_app(credentials=None).test_client()
    error = assert_openai_error(client.post("/v1/chat/completions", json=chat_body()), 503)
    assert "credentials" in error["message"]


def test_request_id_from_the_client_is_kept_and_a_bad_one_replaced(flask_client):
    assert flask_client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    for bad in ("has spaces and <tags>", "x" * 200):
        replaced = flask_client.get("/health", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert replaced != bad and len(replaced) == 32


def test_metrics_is_prometheus_text(flask_client):
    flask_client.get("/health")
    response = flask_client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert b"flask_http_request_total" in response.data


def sse(*events: object) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


CONTENT = {"id": "c", "created": 1, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
FINISH = {"id": "c", "created": 1, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


@responses.activate
def test_error_event_before_any_content_fails_over_invisibly(flask_client):
    overloaded = {"error": {"code": 503, "message": "The model is overloaded", "status": "UNAVAILABLE"}}
    responses.post(GEMINI_URL, body=sse(overloaded), content_type="text/event-stream")
    responses.post(OPENAI_URL, body=sse(CONTENT, FINISH), content_type="text/event-stream")
    response = flask_client.post("/v1/chat/completions?", json=chat_body(model="gemini-2.0-flash", stream=True))
    assert response.status_code == 503  # only gemini offers that model: nowhere to fail over to
    assert response.get_json()["error"]["message"] == "The model is overloaded"
    response = flask_client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["X-Vendor-Source"] == "openai"
    assert '"content":"Hi"' in response.get_data(as_text=True)


@responses.activate
def test_error_event_in_the_same_read_as_the_first_content_is_a_failure_before_commit(flask_client):
    """The client has seen nothing yet, so the error is answered (or failed over), not streamed."""
    failure = {
        "error": {"message": "quota exceeded mid-answer", "type": "insufficient_quota", "code": "insufficient_quota"}
    }
    responses.post(OPENAI_URL, body=sse(CONTENT, failure, CONTENT), content_type="text/event-stream")
    response = flask_client.post("/v1/chat/completions?vendor=openai", json=chat_body(stream=True))
    assert response.status_code == 502
    assert response.get_json() == {
        "error": {
            "message": "quota exceeded mid-answer",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


@responses.activate
def test_role_only_chunk_then_error_fails_over_invisibly(flask_client):
    role = {"id": "c", "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    overloaded = {"error": {"code": 503, "message": "The model is overloaded"}}
    responses.post(GEMINI_URL, body=sse(role, overloaded), content_type="text/event-stream")
    responses.post(OPENAI_URL, body=sse(CONTENT, FINISH), content_type="text/event-stream")
    for _ in range(4):
        response = flask_client.post("/v1/chat/completions", json=chat_body(stream=True))
        assert response.status_code == 200
        assert response.headers["X-Vendor-Source"] == "openai"
        assert response.get_data(as_text=True).endswith("data: [DONE]\n\n")


@responses.activate
def test_error_event_code_sets_status_and_error_type(flask_client):
    exhausted = {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}
    responses.post(GEMINI_URL, body=sse(exhausted), content_type="text/event-stream")
    response = flask_client.post("/v1/chat/completions", json=chat_body(model="gemini-2.0-flash", stream=True))
    assert response.status_code == 429
    assert response.get_json()["error"] == {
        "message": "Resource has been exhausted",
        "type": "rate_limit_error",
        "param": None,
        "code": "RESOURCE_EXHAUSTED",
    }


@responses.activate
def test_stream_of_nothing_but_done_is_not_an_answer_and_cools_its_combination(flask_client):
    responses.post(GEMINI_URL, body="data: [DONE]\n\n", content_type="text/event-stream")
    responses.post(OPENAI_URL, body=sse(CONTENT, FINISH), content_type="text/event-stream")
    response = flask_client.post("/v1/chat/completions", json=chat_body(model="gemini-2.0-flash", stream=True))
    assert response.status_code == 502
    assert "ended the stream without an answer" in response.get_json()["error"]["message"]
    for _ in range(5):  # gemini cools down after the bad answer: the router's own choice avoids it
        response = flask_client.post("/v1/chat/completions", json=chat_body(stream=True))
        assert response.status_code == 200
        assert response.headers["X-Router-Attempts"] == "1"
        assert response.headers["X-Vendor-Source"] == "openai"


@responses.activate
def test_failovers_count_only_failures_followed_by_another_attempt(flask_client):
    responses.post(GEMINI_URL, status=500, json={"error": {"message": "down"}})
    responses.post(OPENAI_URL, status=500, json={"error": {"message": "down too"}})
    response = flask_client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 500
    assert response.headers["X-Router-Attempts"] == "2"
    metrics = parse(flask_client.get("/metrics").get_data(as_text=True))
    assert metrics.value("router_failovers_total") == 1  # the second failure had nothing after it
