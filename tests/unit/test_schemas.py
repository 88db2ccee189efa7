"""Request validation: what passes, what is refused with which param, and the plain-request fast path."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.errors import InvalidRequest
from app.schemas import _CHAT_REQUEST, ROLES, _check_counts, is_plain_chat, validate_chat_request

USER = {"role": "user", "content": "Hello"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [USER]},
        {"model": "any-model", "messages": [{"role": "system", "content": "Be brief"}, USER], "stream": True},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
                }
            ]
        },
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [TOOL],
        },
        {"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"messages": [USER], "tools": [TOOL], "tool_choice": "required", "stream_options": {"include_usage": True}},
        # "auto" and "none" need no tools, in every API the router speaks (one tool-choice rule).
        {"messages": [USER], "tool_choice": "auto"},
        {"messages": [USER], "tool_choice": "none"},
        {"messages": [USER], "temperature": "anything: the vendor judges fields the router does not use"},
    ],
)
def test_valid_requests_pass(body):
    validate_chat_request(body)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "r"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
        (
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": "has space"}}]},
            "tools[0].function.name",
        ),
        ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "x\n"}}]}, "tools[0].function.name"),
        ({"messages": [USER], "tools": [{"type": "retrieval"}]}, "tools[0].type"),
        (
            {
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            },
            "tools[0].function.parameters",
        ),
        ({"messages": [USER], "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"messages": [USER], "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice.function.name",
        ),
        ({"messages": [USER], "tool_choice": "required"}, "tool_choice"),
        ({"messages": [USER], "stream": "true"}, "stream"),
        ({"messages": [USER], "stream": 1}, "stream"),
        ({"messages": [USER], "stream_options": True}, "stream_options"),
        ({"messages": [USER], "model": 4}, "model"),
    ],
)
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        validate_chat_request(body)
    assert caught.value.param == param
    assert caught.value.status == 400


# Values of every JSON type, and the strings and shapes the fast path looks at.
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
NEAR_STRING = st.text(max_size=3) | st.text(min_size=250, max_size=260)  # around the 256 limit
ANY_VALUE = JSON | NEAR_STRING | st.sampled_from([*ROLES, "bot"])
PLAIN_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": st.text(max_size=10)},
    optional={"name": NEAR_STRING},
)
PLAIN_BODY = st.fixed_dictionaries(
    {"messages": st.lists(PLAIN_MESSAGE, min_size=1, max_size=3)},
    optional={
        "model": NEAR_STRING,
        "stream": st.booleans(),
        "stream_options": st.dictionaries(st.text(max_size=3), JSON, max_size=2),
        "temperature": JSON,
    },
)


@st.composite
def near_plain(draw: st.DrawFn) -> dict:
    """A plain-looking body with one field of it, or of one of its messages, set to anything."""
    body = draw(PLAIN_BODY)
    if draw(st.booleans()):
        body[draw(st.sampled_from(["model", "messages", "stream", "stream_options", "tools", "tool_choice"]))] = draw(
            ANY_VALUE
        )
    else:
        message = draw(st.sampled_from(body["messages"]))
        message[draw(st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id", "refusal"]))] = draw(
            ANY_VALUE
        )
    return body


# On the boundary the fast path must get right: plain bodies, and bodies one change away.
BODY = PLAIN_BODY | near_plain()


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(BODY)
def test_fast_path_only_ever_accepts_what_marshmallow_accepts(body):
    if is_plain_chat(body):
        _check_counts(body)
        try:
            _CHAT_REQUEST.load(body)
        except ValidationError as exc:  # pragma: no cover - the failure hypothesis would report
            pytest.fail(f"fast path accepted what the schema refuses: {exc.messages}")


def test_fast_path_takes_the_everyday_request_and_leaves_the_rest():
    assert is_plain_chat({"model": "m", "messages": [{"role": "system", "content": "x"}, USER], "stream": True})
    assert not is_plain_chat({"messages": [USER], "tools": [TOOL]})
    assert not is_plain_chat({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]})
    assert not is_plain_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})


def test_the_property_above_is_not_vacuous():
    """The body strategy does produce requests the fast path accepts, some with several messages."""
    found = find(
        BODY, lambda body: is_plain_chat(body) and len(body["messages"]) >= 2, settings=settings(max_examples=5000)
    )
    assert is_plain_chat(found)
