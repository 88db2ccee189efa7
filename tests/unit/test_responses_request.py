"""Responses requests: what validation accepts, what it refuses with which param, and the chat request each becomes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidRequest
from app.responses.request import to_chat_request
from app.responses.schema import MAX_INPUT_ITEMS, validate_responses_request
from app.schemas import validate_chat_request

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}


@pytest.mark.parametrize(
    "body",
    [
        {"input": "Hello"},
        {"model": "any-model", "input": "Hello", "instructions": "Be brief", "stream": True, "store": True},
        {"input": [{"role": "user", "content": "Hi"}, {"type": "message", "role": "developer", "content": "Be kind"}]},
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                        {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"},
                    ],
                }
            ]
        },
        {
            "input": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
                CALL,
                OUTPUT,
                {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny", "annotations": []}]},
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
        },
        {"input": "x", "tools": [], "tool_choice": "auto"},
        {
            "input": "x",
            "max_output_tokens": 100,
            "reasoning": {"effort": "low", "summary": "auto"},
            "metadata": {"a": "b"},
        },
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}}},
        {"input": "x", "text": {"format": {"type": "json_object"}, "verbosity": "low"}},
        {"input": "x", "background": False, "previous_response_id": None, "include": ["reasoning.encrypted_content"]},
        {"input": "x", "temperature": "anything: the vendor judges the values the router only copies"},
    ],
)
def test_valid_requests_pass(body):
    validate_responses_request(body)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "bot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": None}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}]},
            "input[0].content[0].file_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": "x"}, {**CALL, "call_id": ""}]}, "input[1].call_id"),
        ({"input": [{**CALL, "name": "has space"}]}, "input[0].name"),
        ({"input": [{**CALL, "arguments": {"city": "Oslo"}}]}, "input[0].arguments"),
        ({"input": [CALL, {**OUTPUT, "output": 5}]}, "input[1].output"),
        (
            {"input": [CALL, {**OUTPUT, "output": [{"type": "input_image", "image_url": "u"}]}]},
            "input[1].output[0]",
        ),
        ({"input": [{"role": "user", "content": "x"}, CALL, {**OUTPUT, "call_id": "call_9"}]}, "input[2].call_id"),
        ({"input": [OUTPUT, CALL]}, "input[0].call_id"),
        ({"input": "x", "instructions": 5}, "instructions"),
        ({"input": "x", "tools": [{**TOOL, "name": "x\n"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{**TOOL, "parameters": {"type": "string"}}]}, "tools[0].parameters"),
        ({"input": "x", "tools": [{**TOOL, "strict": "yes"}]}, "tools[0].strict"),
        ({"input": "x", "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
        ({"input": "x", "tools": [TOOL], "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice.type"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "parallel_tool_calls": "false"}, "parallel_tool_calls"),
        ({"input": "x", "stream": 1}, "stream"),
        ({"input": "x", "store": "no"}, "store"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": "100"}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "x", "reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"input": "x", "metadata": ["a"]}, "metadata"),
        ({"input": "x", "text": 5}, "text"),
        ({"input": "x", "text": {"format": "json"}}, "text.format"),
        ({"input": "x", "reasoning": "high"}, "reasoning"),
        ({"input": "x", "tools": [5]}, "tools[0]"),
        ({"input": "x", "model": 4}, "model"),
    ],
)
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        validate_responses_request(body)
    assert (caught.value.status, caught.value.type, caught.value.param) == (400, "invalid_request_error", param)


@pytest.mark.parametrize(
    ("body", "param", "advice"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "whole conversation in input"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "whole conversation in input"),
        ({"input": "x", "conversation": {"id": "conv_1"}}, "conversation", "whole conversation in input"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "as instructions and input"),
        ({"input": "x", "background": True}, "background", "Leave background unset"),
        ({"input": ["x", {"type": "item_reference", "id": "msg_1"}]}, "input[1]", "item itself"),
        ({"input": "x", "tools": [TOOL, {"type": "web_search"}]}, "tools[1].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "web_search_preview"}]}, "tools[0].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "code_interpreter"}]}, "tools[0].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "image_generation"}]}, "tools[0].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "mcp", "server_label": "s"}]}, "tools[0].type", "runs no tools"),
        ({"input": "x", "tools": [{"type": "custom", "name": "apply"}]}, "tools[0].type", "as a function tool"),
        ({"input": "x", "tools": [{"type": "local_shell"}]}, "tools[0].type", "as a function tool"),
    ],
)
def test_stateful_and_server_run_features_are_refused_with_what_to_do_instead(body, param, advice):
    with pytest.raises(InvalidRequest) as caught:
        validate_responses_request(body)
    assert (caught.value.status, caught.value.type, caught.value.param) == (400, "invalid_request_error", param)
    assert advice in caught.value.message


def test_long_input_lists_are_refused_before_any_item_is_loaded():
    items = [{"role": "user", "content": "x"}] * MAX_INPUT_ITEMS + [{"role": "bot"}]
    with pytest.raises(InvalidRequest) as caught:
        validate_responses_request({"input": items})
    assert caught.value.param == "input"
    assert str(MAX_INPUT_ITEMS) in caught.value.message


def test_body_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidRequest):
        validate_responses_request(["input"])


USER = {"role": "user", "content": "Weather in Oslo?"}
CHAT_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("body", "chat"),
    [
        pytest.param(
            {"model": "any-model", "input": "Hello"},
            {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]},
            id="string input is one user message",
        ),
        pytest.param(
            {"input": "Hello", "instructions": "Be brief"},
            {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]},
            id="instructions lead as a system message",
        ),
        pytest.param(
            {
                "input": [
                    {"type": "message", "role": "developer", "content": "Answer in French"},
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Salut"},
                    {"role": "user", "content": "Again"},
                ]
            },
            {
                "messages": [
                    {"role": "system", "content": "Answer in French"},
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Salut"},
                    {"role": "user", "content": "Again"},
                ]
            },
            id="multi-turn messages keep their order, developer becomes system",
        ),
        pytest.param(
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is this?"},
                            {"type": "input_image", "image_url": "https://x/cat.png", "detail": "high"},
                            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                            {
                                "type": "input_file",
                                "file_data": "data:application/pdf;base64,AAAA",
                                "filename": "a.pdf",
                            },
                        ],
                    }
                ]
            },
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "high"}},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                            {
                                "type": "file",
                                "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"},
                            },
                        ],
                    }
                ]
            },
            id="parts become chat parts, image detail kept",
        ),
        pytest.param(
            {
                "input": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "id": "msg_1",
                        "status": "completed",
                        "content": [
                            {"type": "output_text", "text": "I can't ", "annotations": []},
                            {"type": "refusal", "refusal": "help with that."},
                        ],
                    }
                ]
            },
            {"messages": [{"role": "assistant", "content": "I can't help with that."}]},
            id="assistant output_text and refusal history become its text",
        ),
        pytest.param(
            {
                "input": [
                    USER,
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                    CALL,
                    {**CALL, "call_id": "call_2", "arguments": '{"city":"Rome"}'},
                    OUTPUT,
                    {**OUTPUT, "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
                ]
            },
            {
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            CHAT_CALL,
                            {
                                "id": "call_2",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                            },
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
                ]
            },
            id="consecutive function calls are one assistant message, outputs are tool messages, reasoning dropped",
        ),
        pytest.param(
            {"input": [USER, {"role": "assistant", "content": "Let me check."}, CALL, OUTPUT]},
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [CHAT_CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                ]
            },
            id="calls right after the assistant's text join that message, as chat models send them",
        ),
        pytest.param(
            {"input": [USER, CALL, OUTPUT, {**CALL, "call_id": "call_2"}]},
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [CHAT_CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "assistant", "content": None, "tool_calls": [{**CHAT_CALL, "id": "call_2"}]},
                ]
            },
            id="calls separated by an output are two assistant messages",
        ),
        pytest.param(
            {
                "input": "x",
                "tools": [
                    {**TOOL, "description": "Weather now", "strict": True},
                    {"type": "function", "name": "noop", "description": None},
                ],
                "tool_choice": {"type": "function", "name": "get_weather"},
                "parallel_tool_calls": False,
            },
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "description": "Weather now",
                            "parameters": {"type": "object"},
                            "strict": True,
                        },
                    },
                    {"type": "function", "function": {"name": "noop"}},
                ],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
            },
            id="flat function tools nest under function, as does a named tool_choice",
        ),
        pytest.param(
            {"input": "x", "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": True},
            {"messages": [{"role": "user", "content": "x"}], "tools": [CHAT_TOOL], "tool_choice": "required"},
            id="parallel_tool_calls true is chat's default and is not sent",
        ),
        pytest.param(
            {"input": "x", "tools": [], "tool_choice": "auto", "parallel_tool_calls": False},
            {"messages": [{"role": "user", "content": "x"}]},
            id="no tools: no tool_choice or parallel_tool_calls (chat refuses them alone)",
        ),
        pytest.param(
            {"input": "x", "temperature": 0.2, "top_p": 0.9, "user": "u-1", "max_output_tokens": 64},
            {
                "messages": [{"role": "user", "content": "x"}],
                "temperature": 0.2,
                "top_p": 0.9,
                "user": "u-1",
                "max_completion_tokens": 64,
            },
            id="sampling and user pass, max_output_tokens is max_completion_tokens",
        ),
        pytest.param(
            {
                "input": "x",
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "answer",
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                        "strict": True,
                        "description": "The answer",
                    }
                },
            },
            {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                        "strict": True,
                        "description": "The answer",
                    },
                },
            },
            id="text.format json_schema is response_format",
        ),
        pytest.param(
            {"input": "x", "text": {"format": {"type": "json_object"}, "verbosity": "low"}},
            {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
                "verbosity": "low",
            },
            id="text.format json_object and verbosity",
        ),
        pytest.param(
            {"input": "x", "text": {"format": {"type": "text"}}, "reasoning": {"effort": "high", "summary": "auto"}},
            {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high"},
            id="reasoning.effort is reasoning_effort, plain text format is chat's default",
        ),
        pytest.param(
            {"input": "x", "stream": True},
            {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}},
            id="a stream asks the vendor for its usage chunk",
        ),
        pytest.param(
            {
                "input": "x",
                "stream": False,
                "metadata": {"k": "v"},
                "store": True,
                "include": ["reasoning.encrypted_content"],
                "truncation": "auto",
                "service_tier": "flex",
                "max_tool_calls": 3,
                "top_logprobs": 2,
                "background": False,
                "previous_response_id": None,
            },
            {"messages": [{"role": "user", "content": "x"}]},
            id="fields with no chat counterpart are not sent",
        ),
        pytest.param(
            {"input": "x", "prompt_cache_key": "session-1"},
            {"messages": [{"role": "user", "content": "x"}], "prompt_cache_key": "session-1"},
            id="prompt_cache_key is chat's too and is kept",
        ),
    ],
)
def test_chat_request_for_each_responses_request(body, chat):
    validate_responses_request(body)
    assert to_chat_request(body) == chat


def test_translation_leaves_the_client_body_untouched():
    body = {"input": [USER, {"role": "assistant", "content": "Let me check."}, CALL, OUTPUT], "tools": [TOOL]}
    before = repr(body)
    to_chat_request(body)
    assert repr(body) == before


FULL_REQUEST = {
    "model": "any-model",
    "instructions": "Be brief",
    "input": [
        {"type": "message", "role": "developer", "content": "Answer in French"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Checking", "annotations": []}]},
        CALL,
        {**CALL, "call_id": "call_2"},
        OUTPUT,
        {**OUTPUT, "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
    ],
    "tools": [{**TOOL, "description": "Weather now", "strict": False}],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "parallel_tool_calls": False,
    "max_output_tokens": 64,
    "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}, "verbosity": "low"},
    "reasoning": {"effort": "low"},
    "stream": True,
    "store": False,
    "metadata": {"k": "v"},
}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: dict keys and list positions, nested."""
    found = []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


@st.composite
def near_full(draw: st.DrawFn) -> dict:
    """The full request with one value anywhere in it replaced by any JSON value, or removed."""
    body = copy.deepcopy(FULL_REQUEST)
    path = draw(st.sampled_from(paths(body)))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return body


def test_the_full_request_is_valid_and_becomes_a_valid_chat_request():
    validate_responses_request(FULL_REQUEST)
    validate_chat_request(to_chat_request(FULL_REQUEST))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_full())
def test_whatever_validation_accepts_translates_into_a_chat_request_chat_accepts(body):
    try:
        validate_responses_request(body)
    except InvalidRequest as refused:
        assert refused.status == 400
        return
    validate_chat_request(to_chat_request(body))
