"""GET /openapi.json is a valid OpenAPI 3 document, and the real router's answers match it.

Validated with openapi-core (which checks the document itself with openapi-spec-validator) against
the real gunicorn + fake vendor: paths, statuses, content types, headers and bodies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_schema_validator import OAS30Validator

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def _decode_text(body: bytes, charset: str = "utf-8", **_parameters: str) -> str:
    return body.decode(charset)


def api_of(router) -> OpenAPI:
    """The router's own /openapi.json, pointed at this router's address."""
    document = requests.get(router.url("/openapi.json"), timeout=10).json()
    document["servers"] = [{"url": router.base}]
    # An SSE body is text; openapi-core reads media types it does not know as bytes.
    config = Config(extra_media_type_deserializers={"text/event-stream": _decode_text})
    return OpenAPI.from_dict(document, config=config)  # raises if the document is not valid OpenAPI


def caller(api: OpenAPI) -> Callable[..., requests.Response]:
    """Send a request, then validate the request and the router's answer against the document."""

    def send(method: str, url: str, *, validate_request: bool = True, **kwargs: Any) -> requests.Response:
        prepared = requests.Request(method, url, **kwargs).prepare()
        with requests.Session() as session:
            response = session.send(prepared, timeout=30)
        request = RequestsOpenAPIRequest(prepared)
        if validate_request:
            api.validate_request(request)
        api.validate_response(request, RequestsOpenAPIResponse(response))
        return response

    return send


@pytest.fixture
def api(router) -> OpenAPI:
    return api_of(router)


@pytest.fixture
def call(api: OpenAPI) -> Callable[..., requests.Response]:
    return caller(api)


def schema_validator(router, name: str) -> OAS30Validator:
    """A validator for one of the document's component schemas."""
    document = requests.get(router.url("/openapi.json"), timeout=10).json()
    return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def test_openapi_document_is_served_and_describes_every_route(router, api):
    response = requests.get(router.url("/openapi.json"), timeout=10)
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.")
    described = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert described == {
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/{response_id}"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/budget"),
    }


def test_health_metrics_and_models_answers_match_the_document(router, fake, call):
    assert call("GET", router.url("/health")).text == "OK"
    assert call("GET", router.url("/metrics")).status_code == 200
    assert call("GET", router.url("/openapi.json")).status_code == 200
    assert len(call("GET", router.url("/v1/models")).json()["data"]) == 2
    assert call("GET", router.url("/v1/models"), params={"vendor": "nobody"}).json()["data"] == []
    assert call("GET", router.url("/v1/models/gpt-4o")).json()["owned_by"] == "openai"
    assert call("GET", router.url("/v1/models/no-such-model")).status_code == 404


def test_whole_chat_answers_match_the_document(router, fake, call):
    url = router.url("/v1/chat/completions")
    assert call("POST", url, json={"model": "any-model", "messages": HELLO}).status_code == 200
    for vendor in ("openai", "gemini"):  # Gemini's quirks are normalized into the documented shape
        answer = call(
            "POST",
            url,
            params={"vendor": vendor},
            json={"model": "any-model", "messages": HELLO, "tools": [WEATHER_TOOL]},
        )
        assert answer.json()["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        ({"status": 429, "retry_after": 1}, 429),
        ({"status": 500}, 500),
        ({"status": 400, "error_format": "gemini"}, 400),
    ],
)
def test_vendor_error_answers_match_the_document(router, fake, call, behaviour, status):
    fake.behave("openai", **behaviour)
    url = router.url("/v1/chat/completions")
    response = call("POST", url, params={"vendor": "openai"}, json={"model": "any-model", "messages": HELLO})
    assert response.status_code == status


def test_router_error_answers_match_the_document(router, fake, call):
    url = router.url("/v1/chat/completions")
    # Requests the document itself calls invalid: only the answers are checked.
    invalid = [
        ({"json": {"model": "any-model", "messages": []}}, 400),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ({"params": {"vendor": "nobody"}, "json": {"model": "any-model", "messages": HELLO}}, 404),
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
    ]
    for kwargs, status in invalid:
        assert call("POST", url, validate_request=False, **kwargs).status_code == status


def test_stream_answer_matches_the_document(router, fake, api, call):
    response = call(
        "POST",
        router.url("/v1/chat/completions"),
        json={"model": "any-model", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    # Every event's JSON is a documented ChatCompletionChunk.
    validator = schema_validator(router, "ChatCompletionChunk")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        validator.validate(json.loads(event))
    assert json.loads(events[-2])["usage"]["total_tokens"] > 0


RESPONSES_TOOL = {**WEATHER_TOOL["function"], "type": "function"}


def test_whole_responses_answers_match_the_document(router, fake, call):
    url = router.url("/v1/responses")
    answer = call("POST", url, json={"model": "any-model", "input": "Hello", "instructions": "Be brief."})
    assert answer.json()["output"][0]["type"] == "message"
    for vendor in ("openai", "gemini"):
        fake.behave(vendor, parallel=2)
        answer = call(
            "POST",
            url,
            params={"vendor": vendor},
            json={"model": "any-model", "input": [{"role": "user", "content": "Hi"}], "tools": [RESPONSES_TOOL]},
        )
        assert [item["type"] for item in answer.json()["output"]] == ["function_call", "function_call"]
    fake.behave("openai", status=500)
    failed = call("POST", url, params={"vendor": "openai"}, json={"model": "any-model", "input": "Hello"})
    assert failed.status_code == 500


def test_responses_errors_match_the_document(router, fake, call):
    url = router.url("/v1/responses")
    unsupported = call("POST", url, json={"model": "any-model", "input": "Hi", "previous_response_id": "resp_1"})
    assert (unsupported.status_code, unsupported.json()["error"]["param"]) == (400, "previous_response_id")
    hosted = call("POST", url, validate_request=False, json={"input": "Hi", "tools": [{"type": "web_search"}]})
    assert (hosted.status_code, hosted.json()["error"]["param"]) == (400, "tools[0].type")
    assert call("GET", router.url("/v1/responses/resp_123")).status_code == 404


def test_responses_stream_matches_the_document_and_completes_with_a_documented_response(router, fake, call):
    response = call("POST", router.url("/v1/responses"), json={"model": "any-model", "input": "Hi", "stream": True})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    schema_validator(router, "Response").validate(events[-1]["response"])


def test_embeddings_answers_match_the_document(start_router, fake):
    server = start_router(
        models=[
            {"vendor": "openai", "model": "gpt-4o"},
            {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"},
            {"vendor": "gemini", "model": "gemini-embedding-001", "type": "embedding"},
        ]
    )
    call = caller(api_of(server))
    url = server.url("/v1/embeddings")
    for body in (
        {"model": "any-model", "input": "Hello"},
        {"model": "any-model", "input": ["a", "b"], "encoding_format": "base64"},
        {"model": "any-model", "input": [[1, 2], [3]], "dimensions": 4},
    ):
        for vendor in ("openai", "gemini"):
            answer = call("POST", url, params={"vendor": vendor}, json=body)
            assert answer.json()["model"] == "any-model"
    assert call("POST", url, validate_request=False, json={"input": []}).status_code == 400
    assert call("POST", url, json={"model": "gpt-4o", "input": "Hello"}).status_code == 400


MESSAGES_TOOL = {
    "name": "get_weather",
    "description": "Get weather information for a location",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}


def test_whole_messages_answers_match_the_document(router, fake, call):
    url = router.url("/v1/messages")
    body = {
        "model": "any-model",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    for vendor in ("openai", "gemini"):
        answer = call("POST", url, params={"vendor": vendor}, headers=ANTHROPIC_HEADERS, json=body).json()
        assert (answer["type"], answer["stop_reason"]) == ("message", "end_turn")
        # Gemini's tool calls come without ids and with finish_reason "stop": still documented tool_use blocks.
        fake.behave(vendor, parallel=2)
        with_tools = {**body, "tools": [MESSAGES_TOOL], "tool_choice": {"type": "any"}}
        answer = call("POST", url, params={"vendor": vendor}, json=with_tools).json()
        assert [block["type"] for block in answer["content"]] == ["tool_use", "tool_use"]
        assert answer["stop_reason"] == "tool_use"


@pytest.mark.parametrize("vendor", ["openai", "gemini"])
def test_messages_stream_events_match_the_document(router, fake, call, vendor):
    fake.behave(vendor, parallel=2)
    body = {
        "model": "any-model",
        "max_tokens": 64,
        "stream": True,
        "tools": [MESSAGES_TOOL],
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
    }
    response = call("POST", router.url("/v1/messages"), params={"vendor": vendor}, json=body)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    validator = schema_validator(router, "AnthropicStreamEvent")
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert names == [event["type"] for event in events]
    for event in events:
        validator.validate(event)
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "input_json_delta" in [event["delta"].get("type") for event in events if "delta" in event]


def test_count_tokens_and_anthropic_model_lists_match_the_document(router, fake, call):
    counted = call(
        "POST",
        router.url("/v1/messages/count_tokens"),
        headers=ANTHROPIC_HEADERS,
        json={"model": "any-model", "messages": [{"role": "user", "content": "Hello there"}], "tools": [MESSAGES_TOOL]},
    )
    assert counted.json()["input_tokens"] > 0 and counted.headers["X-Token-Count-Method"] == "estimate"
    assert fake.requests() == []
    for headers in ({"anthropic-version": "2023-06-01"}, {"x-api-key": "any"}):
        listing = call("GET", router.url("/v1/models"), headers=headers).json()
        assert "object" not in listing and listing["has_more"] is False
        assert call("GET", router.url("/v1/models/gpt-4o"), headers=headers).json()["type"] == "model"
    assert call("GET", router.url("/v1/models")).json()["object"] == "list"


def test_messages_errors_match_the_document(start_router, fake):
    server = start_router(ROUTER_API_KEYS="sk-openapi-messages-0123456789")
    call = caller(api_of(server))
    url = server.url("/v1/messages")
    key = {"x-api-key": "sk-openapi-messages-0123456789"}
    hello = {"model": "any-model", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    refused = call("POST", url, headers={"x-api-key": "wrong-key-0123456789"}, json=hello)
    assert (refused.status_code, refused.json()["error"]["type"]) == (401, "authentication_error")
    # Requests the document itself calls invalid: only the answers are checked.
    invalid = [
        ({**hello, "max_tokens": 0}, None),
        ({**hello, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, None),
        ({**hello, "mcp_servers": [{"type": "url", "url": "https://mcp.example"}]}, None),
        ({**hello, "tools": [MESSAGES_TOOL], "tool_choice": {"type": "tool", "name": "nothing"}}, None),
        (hello, "nobody"),
    ]
    for body, vendor in invalid:
        params = {"vendor": vendor} if vendor else {}
        answer = call("POST", url, validate_request=False, headers=key, params=params, json=body)
        assert answer.status_code == (404 if vendor else 400), answer.text
        assert answer.json()["type"] == "error"
    unsupported = call(
        "POST", url, validate_request=False, headers={**key, "Content-Type": "text/plain"}, data=b"hello"
    )
    assert unsupported.status_code == 415
    fake.behave("openai", status=429, retry_after=1)
    limited = call("POST", url, headers=key, params={"vendor": "openai"}, json=hello)
    assert (limited.status_code, limited.json()["error"]["type"]) == (429, "rate_limit_error")
    fake.behave("openai", status=503)
    fake.behave("gemini", status=500)
    overloaded = call("POST", url, headers=key, json=hello)
    assert (overloaded.status_code, overloaded.json()["error"]["type"]) == (529, "overloaded_error")
    assert overloaded.headers["retry-after"]
    counted = call("POST", server.url("/v1/messages/count_tokens"), validate_request=False, headers=key, json={})
    assert (counted.status_code, counted.json()["error"]["type"]) == (400, "invalid_request_error")


def test_budget_answers_and_the_budget_refusal_match_the_document(start_router, fake):
    priced = {"input": 2.5, "output": 10.0}
    models = [
        {"vendor": "openai", "model": "gpt-4o", "price": priced},
        {"vendor": "gemini", "model": "g", "price": priced},
    ]
    server = start_router(models=models, BUDGET="20 tokens per day;5 usd per month")
    call = caller(api_of(server))
    assert call("GET", server.url("/v1/budget")).json()["budgets"][0]["unit"] == "tokens"
    url = server.url("/v1/chat/completions")
    assert call("POST", url, json={"model": "gpt-4o", "messages": HELLO}).status_code == 200
    refused = call("POST", url, json={"model": "gpt-4o", "messages": HELLO})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert call("GET", server.url("/v1/budget")).json()["budgets"][0]["remaining"] == 20 - 14
