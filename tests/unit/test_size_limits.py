"""Size limits: bodies, nesting, list lengths and strings are refused cleanly, before they cost CPU."""

from __future__ import annotations

import json

import pytest
import responses

from app.schemas import MAX_MESSAGES, MAX_TOOL_CALLS, MAX_TOOLS
from tests.support.api import OPENAI_URL, assert_openai_error, chat_body, completion

USER = {"role": "user", "content": "hi"}


def post_raw(client, body: bytes):
    return client.post("/v1/chat/completions?vendor=openai", data=body, content_type="application/json")


def nested(depth: int) -> bytes:
    """A chat body whose extra field ``x`` makes the whole document ``depth`` levels deep."""
    inner = depth - 1  # the body object itself is the first level
    return b'{"messages":[{"role":"user","content":"hi"}],"x":' + b"[" * inner + b"]" * inner + b"}"


@responses.activate
def test_body_over_max_body_bytes_is_413_and_reaches_no_vendor(make_app):
    responses.post(OPENAI_URL, json=completion())
    client = make_app(max_body_bytes=10_000).test_client()
    error = assert_openai_error(post_raw(client, json.dumps(chat_body(pad="x" * 10_000)).encode()), 413)
    assert error["code"] == "request_too_large"
    assert post_raw(client, json.dumps(chat_body(pad="x" * 9_000)).encode()).status_code == 200
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("depth", [254])
def test_nesting_the_router_can_forward_is_accepted(flask_client, depth):
    responses.post(OPENAI_URL, json=completion())
    assert post_raw(flask_client, nested(depth)).status_code == 200


@pytest.mark.parametrize("depth", [255, 1024, 1025, 100_000])
def test_deeper_nesting_is_a_400_not_a_500(flask_client, depth):
    error = assert_openai_error(post_raw(flask_client, nested(depth)), 400)
    assert "deep" in error["message"] or "depth" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [USER] * (MAX_MESSAGES + 1)}, "messages"),
        ({"messages": [USER] * 200_000}, "messages"),
        (
            {
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f"}}] * (MAX_TOOLS + 1),
            },
            "tools",
        ),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "a"}] * (MAX_TOOLS + 1)}]},
            "messages[0].tool_calls",
        ),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "a"}] * 400}] * 11},
            "messages",
        ),
    ],
    ids=["messages", "200k-messages", "tools", "tool-calls-in-one-message", "tool-calls-in-all"],
)
def test_too_many_items_are_refused_before_validation(flask_client, body, param):
    assert MAX_TOOL_CALLS < 400 * 11
    error = assert_openai_error(post_raw(flask_client, json.dumps(body).encode()), 400, param)
    assert "At most" in error["message"]


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ({"model": "m" * 1_000_000}, "model"),
        ({"messages": [{"role": "user", "content": "hi", "name": "n" * 100_000}]}, "messages[0].name"),
        ({"tools": [{"type": "function", "function": {"name": "f" * 1_000_000}}]}, "tools[0].function.name"),
    ],
)
def test_huge_strings_in_bounded_fields_are_400(flask_client, field, param):
    response = post_raw(flask_client, json.dumps(chat_body(**field)).encode())
    error = assert_openai_error(response, 400, param)
    assert len(error["message"]) < 300  # the error names the field; it does not quote the string


@responses.activate
def test_a_huge_message_within_the_body_limit_is_the_vendors_to_judge(flask_client):
    responses.post(OPENAI_URL, json=completion())
    content = "é" * 2_000_000
    response = post_raw(
        flask_client,
        json.dumps(chat_body(messages=[{"role": "user", "content": content}]), ensure_ascii=False).encode(),
    )
    assert response.status_code == 200
    assert json.loads(responses.calls[0].request.body)["messages"][0]["content"] == content
