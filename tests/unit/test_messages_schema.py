"""Messages requests: what validation accepts, and what it refuses naming which field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.errors import InvalidRequest
from app.messages.schema import _MESSAGES_REQUEST, is_plain_message_request, validate_messages_request
from app.schemas import MAX_MESSAGES, MAX_TOOLS

TOOL = {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
USE = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}
# What Claude Code sends (trimmed): system blocks with cache_control, a system-role message,
# adaptive thinking with an effort, metadata, context_management and a deferred tool.
CLAUDE_CODE = {
    "model": "claude-opus-5-5",
    "max_tokens": 128000,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "List files", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "system",
            "content": [{"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Sure."},
                USE,
            ],
        },
        {"role": "user", "content": [RESULT, {"type": "text", "text": "Thanks"}]},
    ],
    "tools": [TOOL, {"name": "DeferredToolPlaceholder", "input_schema": {"type": "object"}, "defer_loading": True}],
    "metadata": {"user_id": '{"device_id":"x"}'},
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "medium"},
}


def body(**changes: Any) -> dict[str, Any]:
    base = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param(CLAUDE_CODE, id="claude code"),
        pytest.param(body(), id="minimal"),
        pytest.param(body(system="Be brief", temperature=1, top_p=0.9, top_k=5, stop_sequences=["END"]), id="sampling"),
        pytest.param(
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": PNG},
                            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                            {
                                "type": "document",
                                "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
                                "title": "report",
                            },
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                            },
                            {
                                "type": "document",
                                "source": {"type": "content", "content": [{"type": "text", "text": "c"}]},
                            },
                        ],
                    }
                ]
            ),
            id="images and documents",
        ),
        pytest.param(
            body(
                messages=[
                    {"role": "user", "content": "Run it"},
                    {"role": "assistant", "content": [USE, {"type": "redacted_thinking", "data": "opaque"}]},
                    {
                        "role": "user",
                        "content": [
                            {
                                **RESULT,
                                "is_error": True,
                                "content": [{"type": "text", "text": "no"}, {"type": "image", "source": PNG}],
                            }
                        ],
                    },
                ],
                tools=[TOOL],
                tool_choice={"type": "tool", "name": "Bash", "disable_parallel_tool_use": True},
            ),
            id="tool use and results",
        ),
        pytest.param(body(thinking={"type": "enabled", "budget_tokens": 2048}), id="thinking enabled"),
        pytest.param(body(thinking={"type": "disabled"}, output_config={"effort": "max"}), id="thinking disabled"),
        pytest.param(body(tools=[{**TOOL, "type": "custom"}], tool_choice={"type": "any"}), id="custom tool type"),
        pytest.param(body(mcp_servers=[], container=None, service_tier="auto", unknown_field=1), id="ignored fields"),
        pytest.param(
            body(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}), id="format"
        ),
    ],
)
def test_valid_requests_pass(request_body):
    validate_messages_request(copy.deepcopy(request_body))


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


INVALID = {
    "not an object": ([], None),
    "no model": ({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}, "model"),
    "no max_tokens": ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    "max_tokens zero": (body(max_tokens=0), "max_tokens"),
    "max_tokens a string": (body(max_tokens="100"), "max_tokens"),
    "no messages": (body(messages=[]), "messages"),
    "too many messages": (body(messages=[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)), "messages"),
    "bad role": (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    "content a number": (body(messages=[{"role": "user", "content": 3}]), "messages.0.content"),
    "block without type": (body(messages=user({"text": "x"})), "messages.0.content.0"),
    "text not a string": (body(messages=user({"type": "text", "text": 1})), "messages.0.content.0.text"),
    "image without source": (body(messages=user({"type": "image"})), "messages.0.content.0.source"),
    "image source type": (
        body(messages=user({"type": "image", "source": {"type": "ftp"}})),
        "messages.0.content.0.source.type",
    ),
    "image from the files api": (
        body(messages=user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})),
        "messages.0.content.0.source.type",
    ),
    "image data missing": (
        body(messages=user({"type": "image", "source": {"type": "base64", "media_type": "image/png"}})),
        "messages.0.content.0.source.data",
    ),
    "document by url": (
        body(messages=user({"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}})),
        "messages.0.content.0.source.type",
    ),
    "base64 document not a pdf": (
        body(messages=user({"type": "document", "source": {**PNG}})),
        "messages.0.content.0.source.media_type",
    ),
    "tool_use in a user message": (body(messages=user(USE)), "messages.0.content.0.type"),
    "tool_result in an assistant message": (
        body(messages=[{"role": "assistant", "content": [RESULT]}]),
        "messages.0.content.0.type",
    ),
    "image in a system message": (
        body(messages=[{"role": "system", "content": [{"type": "image", "source": PNG}]}]),
        "messages.0.content.0.type",
    ),
    "server tool block in history": (
        body(
            messages=[{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search"}]}]
        ),
        "messages.0.content.0.type",
    ),
    "tool_use input not an object": (
        body(messages=[{"role": "assistant", "content": [{**USE, "input": "ls"}]}]),
        "messages.0.content.0.input",
    ),
    "tool_result for no earlier tool_use": (body(messages=user(RESULT)), "messages.0.content.0.tool_use_id"),
    "tool_result is_error a string": (
        body(messages=[{"role": "assistant", "content": [USE]}, *user({**RESULT, "is_error": "yes"})]),
        "messages.1.content.0.is_error",
    ),
    "tool_result content block type": (
        body(messages=[{"role": "assistant", "content": [USE]}, *user({**RESULT, "content": [USE]})]),
        "messages.1.content.0.content.0.type",
    ),
    "system a number": (body(system=1), "system"),
    "system holds an image": (body(system=[{"type": "image", "source": PNG}]), "system.0.type"),
    "server tool": (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    "bash server tool": (body(tools=[TOOL, {"type": "bash_20250124", "name": "bash"}]), "tools.1.type"),
    "too many tools": (body(tools=[TOOL] * (MAX_TOOLS + 1)), "tools"),
    "tool without input_schema": (body(tools=[{"name": "Bash"}]), "tools.0.input_schema"),
    "tool name empty": (body(tools=[{**TOOL, "name": ""}]), "tools.0.name"),
    "tool named twice": (body(tools=[TOOL, TOOL]), "tools.1.name"),
    "mcp_servers": (body(mcp_servers=[{"type": "url", "url": "https://mcp.test", "name": "x"}]), "mcp_servers"),
    "container": (body(container="container_1"), "container"),
    "tool_choice names no tool": (body(tools=[TOOL], tool_choice={"type": "tool", "name": "Read"}), "tool_choice.name"),
    "tool_choice tool without a name": (body(tools=[TOOL], tool_choice={"type": "tool"}), "tool_choice.name"),
    "tool_choice any without tools": (body(tool_choice={"type": "any"}), "tool_choice.type"),
    "tool_choice unknown type": (body(tools=[TOOL], tool_choice={"type": "required"}), "tool_choice.type"),
    "disable_parallel_tool_use a string": (
        body(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": "true"}),
        "tool_choice.disable_parallel_tool_use",
    ),
    "temperature above 1": (body(temperature=1.5), "temperature"),
    "temperature a string": (body(temperature="0.5"), "temperature"),
    "stream a string": (body(stream="true"), "stream"),
    "stop_sequences a string": (body(stop_sequences="END"), "stop_sequences"),
    "thinking type": (body(thinking={"type": "on"}), "thinking.type"),
    "thinking enabled without budget": (body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    "effort unknown": (body(output_config={"effort": "extreme"}), "output_config.effort"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_requests_are_400_naming_the_field(case):
    request_body, param = INVALID[case]
    with pytest.raises(InvalidRequest) as caught:
        validate_messages_request(request_body)
    assert caught.value.status == 400
    assert caught.value.param == param
    if param is not None:
        assert caught.value.message.startswith(param)


def test_refusals_say_what_to_do_instead():
    with pytest.raises(InvalidRequest, match="custom tool"):
        validate_messages_request(body(tools=[{"type": "web_search_20250305", "name": "web_search"}]))
    with pytest.raises(InvalidRequest, match="MCP servers in the client"):
        validate_messages_request(body(mcp_servers=[{"type": "url", "url": "https://mcp.test", "name": "x"}]))
    with pytest.raises(InvalidRequest, match="send the PDF as base64"):
        validate_messages_request(
            body(messages=user({"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}))
        )


def test_count_tokens_requests_need_no_max_tokens():
    counting = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    validate_messages_request(counting, counting=True)
    with pytest.raises(InvalidRequest):
        validate_messages_request(counting)


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.integers(-2, 200000),
    st.floats(-1, 2, allow_nan=False),
    st.text(max_size=5),
    st.sampled_from(["user", "assistant", "system", "any-model"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["type", "text"]), st.text(max_size=3), max_size=2),
)
_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool"]),
            "content": st.one_of(st.text(max_size=5), _VALUES),
        }
    ),
    st.dictionaries(st.sampled_from(["role", "content", "name"]), _VALUES, max_size=3),
    _VALUES,
)
_PLAIN_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=5)})
# Each field is either plain or one of the edge values the schema may refuse, so that bodies the
# fast path accepts are common and every way of being almost plain is tried.
_EDGES = st.sampled_from([None, 0, -1, 1, 2, 1.5, 0.5, True, False, "", "16", [], {}, 10**6])
_OPTIONAL = ["system", "stream", "temperature", "top_p", "metadata", "tools"]
PLAINISH_BODY = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("m"), _EDGES, st.text(max_size=3)),
        "max_tokens": st.one_of(st.just(16), _EDGES),
        "messages": st.one_of(st.lists(_PLAIN_MESSAGE, min_size=1, max_size=3), st.lists(_MESSAGE, max_size=3), _EDGES),
    },
    optional={name: st.one_of(_EDGES, st.text(max_size=3), _VALUES) for name in _OPTIONAL},
)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(PLAINISH_BODY)
def test_the_fast_path_only_ever_accepts_what_the_schema_accepts(body):
    if is_plain_message_request(body):
        try:
            _MESSAGES_REQUEST.load(body)
        except ValidationError as exc:  # pragma: no cover - the failure hypothesis would report
            pytest.fail(f"fast path accepted what the schema refuses: {exc.messages}")


def test_the_fast_path_takes_the_everyday_request_and_leaves_the_rest():
    plain = {"model": "m", "max_tokens": 64, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}
    assert is_plain_message_request({**plain, "stream": True, "temperature": 0.2})
    assert not is_plain_message_request({**plain, "tools": [{"name": "Bash", "input_schema": {}}]})
    assert not is_plain_message_request({**plain, "messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert not is_plain_message_request({**plain, "max_tokens": 0})


def test_the_property_above_is_not_vacuous():
    """The body strategy does produce requests the fast path accepts, some with several turns."""
    found = find(
        PLAINISH_BODY,
        lambda body: is_plain_message_request(body) and len(body["messages"]) >= 2,
        settings=settings(max_examples=5000),
    )
    assert is_plain_message_request(found)
