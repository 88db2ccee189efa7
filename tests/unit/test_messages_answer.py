"""Whole answers as Messages, and router errors as Anthropic errors."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest

from app.endpoint import UnusableAnswer
from app.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    RouterError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    VendorError,
)
from app.messages.answer import to_message
from app.messages.errors import DEFAULT_RETRY_AFTER, anthropic_error, stream_error_type
from app.messages.request import ToolNames

NAMES = ToolNames()
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


def completion(finish_reason: str | None = "stop", usage: Any = USAGE, **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1735000000,
        "model": "any-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": usage,
    }


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_text_answer_is_a_message_with_the_requested_model_and_usage():
    message = to_message(completion(content="Hello!"), "claude-opus-5-5", NAMES)
    assert message.pop("id").startswith("msg_")
    assert message == {
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-5-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 120,
            "output_tokens": 30,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_the_sdk_reads_the_message_as_a_message():
    message = anthropic.types.Message.model_validate(
        to_message(
            completion(reasoning_content="Hmm.", content="Hi", tool_calls=[call("call_1", "Bash", '{"command":"ls"}')]),
            "m",
            NAMES,
        )
    )
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"command": "ls"}


def test_blocks_come_in_order_thinking_text_tool_use_with_parsed_input():
    answer = completion(
        "tool_calls",
        reasoning_content="User wants files.",
        content="Listing.",
        tool_calls=[call("call_1", "Bash", '{"command": "ls"}'), call("call_2", "Read", "")],
    )
    message = to_message(answer, "m", NAMES)
    assert message["content"] == [
        {"type": "thinking", "thinking": "User wants files.", "signature": ""},
        {"type": "text", "text": "Listing."},
        {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}},
        {"type": "tool_use", "id": "call_2", "name": "Read", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_bug15_reasoning_only_answer_keeps_its_reasoning():
    """A vendor that put everything in reasoning_content still gives the client something."""
    message = to_message(completion(content=None, reasoning_content="The answer is 4."), "m", NAMES)
    assert message["content"] == [{"type": "thinking", "thinking": "The answer is 4.", "signature": ""}]
    # OpenRouter and Ollama call the field "reasoning".
    message = to_message(completion(content="4", reasoning="2+2"), "m", NAMES)
    assert message["content"][0] == {"type": "thinking", "thinking": "2+2", "signature": ""}


@pytest.mark.parametrize(
    ("finish_reason", "calls", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("stop", True, "tool_use"),  # Gemini says stop after calling tools
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("something_new", False, "end_turn"),
    ],
)
def test_finish_reason_becomes_stop_reason(finish_reason, calls, stop_reason):
    tool_calls = [call("call_1", "Bash", "{}")] if calls else None
    message = to_message(completion(finish_reason, content="x", tool_calls=tool_calls), "m", NAMES)
    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] is None


def test_usage_input_tokens_exclude_cache_reads():
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 100}}
    assert to_message(completion(content="x", usage=usage), "m", NAMES)["usage"] == {
        "input_tokens": 20,
        "output_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
    }


def test_bug5_without_vendor_usage_tokens_are_estimated_never_zero():
    message = to_message(completion(content="x" * 40, usage=None), "m", NAMES, estimated_input_tokens=321)
    assert message["usage"] == {
        "input_tokens": 321,
        "output_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_refusal_is_text_and_content_filter_a_refusal():
    message = to_message(completion("content_filter", content=None, refusal="I can't help."), "m", NAMES)
    assert message["content"] == [{"type": "text", "text": "I can't help."}]
    assert message["stop_reason"] == "refusal"


def test_empty_answer_is_a_message_without_blocks():
    assert to_message(completion(content=""), "m", NAMES)["content"] == []


def test_bug11_renamed_tool_names_are_mapped_back_to_the_clients():
    long_name = "mcp__server__" + "x" * 70
    names = ToolNames.of([long_name, "Bash"])
    answer = completion(
        "tool_calls", tool_calls=[call("call_1", names.vendor(long_name), "{}"), call("call_2", "Bash", "{}")]
    )
    assert [block["name"] for block in to_message(answer, "m", names)["content"]] == [long_name, "Bash"]


@pytest.mark.parametrize("arguments", ['{"command": "ls"', "[1, 2]", '"ls"', "null", "not json", 42])
def test_bug17_tool_arguments_that_are_not_a_json_object_make_the_answer_unusable(arguments):
    """Raised before anything reaches the client, so the pipeline tries another combination."""
    answer = completion("tool_calls", tool_calls=[call("call_1", "Bash", arguments)])
    with pytest.raises(UnusableAnswer, match="not a JSON object"):
        to_message(answer, "m", NAMES)


@pytest.mark.parametrize("answer", [{"choices": []}, {}, {"choices": [{"index": 0}]}])
def test_completion_without_an_answer_is_unusable(answer):
    with pytest.raises(UnusableAnswer):
        to_message(answer, "m", NAMES)


# -- errors -------------------------------------------------------------------------------------


def vendor(status: int, message: str = "vendor says no", headers: dict[str, str] | None = None) -> VendorError:
    return VendorError(status, {"message": message, "type": "x", "param": None, "code": None}, headers)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad field", param="messages.0"), 400, "invalid_request_error"),
        (AuthenticationFailed("Missing API key."), 401, "authentication_error"),
        (NotFound("no such model"), 404, "not_found_error"),
        (PayloadTooLarge("too big"), 413, "request_too_large"),
        (RateLimited("slow down", headers={"Retry-After": "7"}), 429, "rate_limit_error"),
        (RouterError("boom"), 500, "api_error"),
        (UpstreamError("every combination failed"), 529, "overloaded_error"),
        (ServiceUnavailable("all cooling"), 529, "overloaded_error"),
        (UpstreamTimeout("vendor too slow"), 504, "timeout_error"),
        (RequestTimeout("deadline"), 504, "timeout_error"),
        (vendor(400), 400, "invalid_request_error"),
        (vendor(403), 403, "permission_error"),
        (vendor(422), 422, "invalid_request_error"),
        (vendor(429), 429, "rate_limit_error"),
        (vendor(500), 529, "overloaded_error"),
        (vendor(503), 529, "overloaded_error"),
        (vendor(529), 529, "overloaded_error"),
    ],
)
def test_router_errors_become_anthropic_errors_by_status(error, status, kind):
    answered, body, headers = anthropic_error(error, "req_123")
    assert answered == status
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}, "request_id": "req_123"}
    if status in (429, 529):
        assert headers["retry-after"].isdigit()
    else:
        assert "retry-after" not in headers


def test_a_vendors_400_keeps_the_vendors_message():
    _, body, _ = anthropic_error(vendor(400, "max_tokens is too large: 128000"), "req_1")
    assert body["error"] == {"type": "invalid_request_error", "message": "max_tokens is too large: 128000"}


def test_retry_after_is_the_errors_own_else_the_default():
    assert anthropic_error(vendor(429, headers={"Retry-After": "12"}), "r")[2]["retry-after"] == "12"
    assert anthropic_error(ServiceUnavailable("cooling", headers={"retry-after": "3"}), "r")[2] == {"retry-after": "3"}
    assert anthropic_error(UpstreamError("down"), "r")[2] == {"retry-after": str(DEFAULT_RETRY_AFTER)}
    assert 1 <= DEFAULT_RETRY_AFTER <= 30


def test_other_headers_of_the_error_are_kept():
    _, _, headers = anthropic_error(AuthenticationFailed("no key", headers={"WWW-Authenticate": "Bearer"}), "r")
    assert headers == {"WWW-Authenticate": "Bearer"}


def test_the_sdk_raises_the_matching_exception_for_each_error():
    """The anthropic SDK picks its exception class by status: what the client's retry logic sees."""
    expected = {
        400: anthropic.BadRequestError,
        401: anthropic.AuthenticationError,
        429: anthropic.RateLimitError,
        529: anthropic.OverloadedError,
        504: anthropic.InternalServerError,
    }
    client = anthropic.Anthropic(api_key="k", max_retries=0)
    for error in (
        InvalidRequest("x"),
        AuthenticationFailed("x"),
        RateLimited("x"),
        UpstreamError("x"),
        RequestTimeout("x"),
    ):
        status, body, _ = anthropic_error(error, "req_1")
        response = httpx2.Response(status, json=body, request=httpx2.Request("POST", "http://router.test/v1/messages"))
        raised = client._make_status_error_from_response(response)
        assert isinstance(raised, expected[status])
        assert raised.body["error"]["message"] == "x"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (UpstreamError("vendor dropped"), "overloaded_error"),
        (vendor(502, "bad gateway"), "overloaded_error"),
        (vendor(429), "overloaded_error"),
        (UpstreamTimeout("stalled"), "overloaded_error"),
        (RouterError("The router failed while relaying the stream."), "api_error"),
        (vendor(400), "api_error"),
    ],
)
def test_errors_ending_a_stream_are_overloaded_when_a_retry_may_help(error, kind):
    assert stream_error_type(error) == kind
