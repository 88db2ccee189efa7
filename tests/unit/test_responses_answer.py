"""Whole answers: the Responses object each normalized chat completion becomes."""

from __future__ import annotations

import re

import pytest
from openai.types.responses import Response

from app.responses.answer import response_error, response_usage, to_response

REQUEST = {"model": "any-model", "input": "Weather in Oslo?"}
CALL_1 = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
CALL_2 = {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
RESPONSES_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 17,
}


def completion(finish_reason="stop", usage=USAGE, **message):
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1735000000,
        "model": "any-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
    }
    if usage is not None:
        answer["usage"] = usage
    return answer


def text(value):
    return {"type": "output_text", "text": value, "annotations": []}


def shape(answer):
    """The answer's output with generated ids replaced by their prefixes, for comparing tables."""
    output = []
    for item in answer["output"]:
        item = dict(item)
        item["id"] = re.sub(r"_[0-9a-f]{48}$", "_", item["id"])
        output.append(item)
    return output


@pytest.mark.parametrize(
    ("answer", "status", "reason", "output"),
    [
        pytest.param(
            completion(content="Sunny"),
            "completed",
            None,
            [{"id": "msg_", "type": "message", "role": "assistant", "status": "completed", "content": [text("Sunny")]}],
            id="text",
        ),
        pytest.param(
            completion(content=None, refusal="I can't help with that."),
            "completed",
            None,
            [
                {
                    "id": "msg_",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "refusal", "refusal": "I can't help with that."}],
                }
            ],
            id="refusal part",
        ),
        pytest.param(
            completion(finish_reason="tool_calls", content=None, tool_calls=[CALL_1, CALL_2]),
            "completed",
            None,
            [
                {
                    "id": "fc_",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Oslo"}',
                },
                {
                    "id": "fc_",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": "call_2",
                    "name": "get_time",
                    "arguments": "{}",
                },
            ],
            id="parallel tool calls, no message",
        ),
        pytest.param(
            completion(finish_reason="tool_calls", content="Let me check.", tool_calls=[CALL_1]),
            "completed",
            None,
            [
                {
                    "id": "msg_",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [text("Let me check.")],
                },
                {
                    "id": "fc_",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Oslo"}',
                },
            ],
            id="text then a call: the message comes first",
        ),
        pytest.param(
            completion(finish_reason="length", content="Sunny and"),
            "incomplete",
            "max_output_tokens",
            [
                {
                    "id": "msg_",
                    "type": "message",
                    "role": "assistant",
                    "status": "incomplete",
                    "content": [text("Sunny and")],
                }
            ],
            id="length is incomplete at max_output_tokens",
        ),
        pytest.param(
            completion(finish_reason="content_filter", content=""),
            "incomplete",
            "content_filter",
            [{"id": "msg_", "type": "message", "role": "assistant", "status": "incomplete", "content": [text("")]}],
            id="content_filter is incomplete for content_filter",
        ),
        pytest.param(
            completion(content=""),
            "completed",
            None,
            [{"id": "msg_", "type": "message", "role": "assistant", "status": "completed", "content": [text("")]}],
            id="an empty answer is one empty message",
        ),
    ],
)
def test_each_chat_answer_becomes_its_response(answer, status, reason, output):
    response = to_response(answer, REQUEST, "any-model")
    assert shape(response) == output
    assert response["status"] == status
    assert response["incomplete_details"] == ({"reason": reason} if reason else None)
    assert response["usage"] == RESPONSES_USAGE
    assert response["error"] is None
    # Every field the official SDK requires is there and well-typed.
    parsed = Response.model_validate(response)
    assert parsed.output_text == "".join(part.get("text", "") for item in output for part in item.get("content", []))


def test_response_has_its_own_ids_and_the_requested_model():
    response = to_response(completion(content="Sunny"), REQUEST, "any-model")
    assert re.fullmatch(r"resp_[0-9a-f]{48}", response["id"])
    assert response["object"] == "response"
    assert response["model"] == "any-model"
    assert response["created_at"] == 1735000000
    assert isinstance(response["completed_at"], int)
    other = to_response(completion(content="Sunny"), REQUEST, "any-model")
    assert other["id"] != response["id"]
    assert other["output"][0]["id"] != response["output"][0]["id"]


def test_function_call_ids_are_distinct_and_call_id_is_the_tool_call_id():
    response = to_response(completion(finish_reason="tool_calls", tool_calls=[CALL_1, CALL_2]), REQUEST, "m")
    ids = [item["id"] for item in response["output"]]
    assert len(set(ids)) == 2
    assert all(item_id.startswith("fc_") for item_id in ids)
    assert [item["call_id"] for item in response["output"]] == ["call_1", "call_2"]


def test_request_settings_are_echoed_and_nothing_is_stored():
    request = {
        "model": "any-model",
        "input": "x",
        "instructions": "Be brief",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 64,
        "metadata": {"ticket": "42"},
        "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        "reasoning": {"effort": "low"},
        "user": "u-1",
        "store": True,
        "truncation": "auto",
    }
    response = to_response(completion(content="{}"), request, "any-model")
    echoed = {key: response[key] for key in request if key not in ("model", "input")}
    assert echoed == {
        **{key: request[key] for key in echoed},
        "reasoning": {"effort": "low", "summary": None},
        "store": False,
    }
    assert response["previous_response_id"] is None
    assert response["background"] is False
    Response.model_validate(response)


def test_defaults_are_echoed_as_openai_reports_them():
    response = to_response(completion(content="hi"), {"input": "x"}, "any-model")
    assert response["tools"] == []
    assert response["tool_choice"] == "auto"
    assert response["parallel_tool_calls"] is True
    assert response["metadata"] == {}
    assert response["text"] == {"format": {"type": "text"}}
    assert response["truncation"] == "disabled"
    assert response["instructions"] is None


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(None, None, id="no usage reported: none invented"),
        pytest.param(USAGE, RESPONSES_USAGE, id="plain counts"),
        pytest.param(
            {
                "prompt_tokens": 100,
                "completion_tokens": 40,
                "total_tokens": 140,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 30},
            },
            {
                "input_tokens": 100,
                "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
                "output_tokens": 40,
                "output_tokens_details": {"reasoning_tokens": 30},
                "total_tokens": 140,
            },
            id="cached and reasoning tokens",
        ),
        pytest.param(
            {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": None},
            {
                "input_tokens": 7,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 3,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 10,
            },
            id="missing total and null details",
        ),
        pytest.param(
            {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 25},
            {
                "input_tokens": 7,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 3,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 25,
            },
            id="the vendor's total is kept (Gemini counts thinking only there)",
        ),
    ],
)
def test_usage_uses_the_responses_names(usage, expected):
    assert response_usage(usage) == expected
    response = to_response(completion(content="hi", usage=usage), REQUEST, "m")
    assert response["usage"] == expected
    Response.model_validate(response)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"},
            {"code": "rate_limit_exceeded", "message": "Rate limit reached"},
        ),
        (
            {"message": "openai/gpt-4o timed out", "type": "upstream_error", "code": "upstream_timeout"},
            {"code": "server_error", "message": "openai/gpt-4o timed out"},
        ),
        ({"message": "", "code": None}, {"code": "server_error", "message": "The vendor failed while answering."}),
    ],
)
def test_response_error_uses_the_apis_codes(error, expected):
    assert response_error(error) == expected


def test_a_reasoning_summary_asked_for_is_not_echoed_as_if_one_were_made():
    request = {"input": "x", "reasoning": {"effort": "high", "summary": "detailed"}}
    response = to_response(completion(content="ok"), request, "any-model")
    assert response["reasoning"] == {"effort": "high", "summary": None}
