"""Helpers for tests of the HTTP surface through Flask's test client, vendors mocked by `responses`."""

from __future__ import annotations

from typing import Any

# The chat URLs of the vendor hosts unit tests configure (tests/conftest.py's UNIT_BASE_URLS).
OPENAI_URL = "http://openai.test/v1/chat/completions"
GEMINI_URL = "http://gemini.test/v1beta/openai/chat/completions"


def completion(content="Hi there", model="vendor-model"):
    """A vendor's whole chat completion answering ``content``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def assert_openai_error(response, status, param=None):
    """``response`` is an OpenAI-shaped JSON error with ``status`` and ``param``; return the error object."""
    assert response.status_code == status
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


def chat_body(**fields: Any) -> dict[str, Any]:
    """A minimal valid chat request, with ``fields`` added or replaced."""
    return {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}], **fields}
