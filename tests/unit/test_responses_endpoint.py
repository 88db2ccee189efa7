"""The Responses endpoint's own errors, through the Flask test client (vendors: tests/integration)."""

from __future__ import annotations

import responses as responses_mock  # the HTTP mocking library, not the Responses endpoint

from tests.support.api import assert_openai_error

TEXT_ONLY = [{"vendor": "openai", "model": "gpt-4o", "config": {"support_tools": True, "support_streaming": True}}]
PICTURE = {
    "role": "user",
    "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.test/cat.png"},
    ],
}


@responses_mock.activate
def test_an_image_no_model_supports_is_refused_naming_input(make_app):
    client = make_app(models=TEXT_ONLY).test_client()
    error = assert_openai_error(client.post("/v1/responses", json={"input": [PICTURE]}), 400, param="input")
    assert error["code"] == "capability_not_supported"
    assert "images" in error["message"]
    assert len(responses_mock.calls) == 0


def test_retrieving_a_response_is_a_404_saying_nothing_is_stored(flask_client):
    error = assert_openai_error(flask_client.get("/v1/responses/resp_abc"), 404, param="response_id")
    assert "never stores" in error["message"]
    assert_openai_error(flask_client.get("/v1/responses/resp_abc/input_items"), 404, param="response_id")


def test_a_body_that_is_not_json_is_a_400(flask_client):
    response = flask_client.post("/v1/responses", data=b"{not json", content_type="application/json")
    assert_openai_error(response, 400)


def test_an_embedding_model_named_in_a_responses_request_is_refused(make_app):
    models = [{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "openai", "model": "emb", "type": "embedding"}]
    client = make_app(models=models).test_client()
    error = assert_openai_error(client.post("/v1/responses", json={"model": "emb", "input": "Hi"}), 400, "model")
    assert error["code"] == "wrong_model_type"
