"""Streamed answers: the Messages events each sequence of normalized chat chunks becomes.

Beyond the event tables, the bytes are read by the official anthropic SDK (its SSE decoder, its
event models and its stream accumulator): ``get_final_message()`` must hold the content and usage
a client expects, as against Anthropic's API.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from app.endpoint import UnusableAnswer
from app.errors import UpstreamError, VendorError
from app.messages.request import ToolNames
from app.messages.stream import MessagesStream

NAMES = ToolNames()
ESTIMATE = 321
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


def chunk(finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1735000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def call_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return call


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    return {**chunk(), "choices": [], "usage": usage}


ROLE = chunk(role="assistant", content="")
TEXT = [ROLE, chunk(content="Sunny"), chunk(content=", 20 C"), chunk("stop"), usage_chunk()]
THINK_THEN_TEXT = [
    ROLE,
    chunk(reasoning_content="The user"),
    chunk(reasoning_content=" wants weather."),
    chunk(content="Sunny"),
    chunk("stop"),
    usage_chunk(),
]
OPENAI_CALLS = [
    ROLE,
    chunk(tool_calls=[call_delta(0, "", "call_1", "get_weather")]),
    chunk(tool_calls=[call_delta(0, '{"city":')]),
    chunk(tool_calls=[call_delta(0, '"Oslo"}')]),
    chunk(tool_calls=[call_delta(1, "", "call_2", "get_time")]),
    chunk(tool_calls=[call_delta(1, "{}")]),
    chunk("tool_calls"),
    usage_chunk(),
]
# Gemini (after normalization) sends each call whole, in its own chunk, after some text.
GEMINI_CALLS = [
    chunk(role="assistant", content="Let me check."),
    chunk(tool_calls=[call_delta(0, '{"city":"Oslo"}', "call_a", "get_weather")]),
    chunk("tool_calls", tool_calls=[call_delta(1, "{}", "call_b", "get_time")]),
    usage_chunk(),
]
INTERLEAVED_CALLS = [
    chunk(tool_calls=[call_delta(0, '{"a":', "call_1", "f"), call_delta(1, '{"b":', "call_2", "g")]),
    chunk(tool_calls=[call_delta(1, "2}")]),
    chunk(tool_calls=[call_delta(0, "1}")]),
    chunk("tool_calls"),
]


def translate(chunks: list[dict[str, Any]], names: ToolNames = NAMES, *, end: bool = True) -> bytes:
    stream = MessagesStream("claude-x", names, ESTIMATE)
    body = stream.opening() + b"".join(stream.event(item) for item in chunks)
    return body + stream.done() if end else body


def parse(body: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body, checking each is `event: <type>` then one data line."""
    events = []
    assert body.endswith(b"\n\n")
    for block in body.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        events.append(data)
    return events


def assert_well_formed(events: list[dict[str, Any]]) -> None:
    """Anthropic's rules: one message_start first; blocks indexed 0.. in order, one open at a time,
    each started before its deltas and stopped before the next starts; message_delta then
    message_stop last."""
    assert events[0]["type"] == "message_start"
    assert [event["type"] for event in events].count("message_start") == 1
    open_block: int | None = None
    started = 0
    kinds: dict[int, str] = {}
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_block is None, "a block starts while another is open"
            assert event["index"] == started
            kinds[started] = event["content_block"]["type"]
            open_block = started
            started += 1
        elif kind == "content_block_delta":
            assert event["index"] == open_block
            delta_type = event["delta"]["type"]
            allowed = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"}}
            assert delta_type in allowed.get(kinds[open_block], {"input_json_delta"})
        elif kind == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
        elif kind == "message_delta":
            assert open_block is None
    if events[-1]["type"] == "message_stop":
        assert events[-2]["type"] == "message_delta"
        assert open_block is None


def final_message(body: bytes) -> anthropic.types.Message:
    """What the anthropic SDK's stream helper makes of the bytes."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = anthropic.Anthropic(
        api_key="k", base_url="http://router.test", http_client=httpx2.Client(transport=httpx2.MockTransport(answer))
    )
    request = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    with client.messages.stream(**request) as stream:
        return stream.get_final_message()


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def test_text_answer_event_sequence_and_what_the_sdk_makes_of_it():
    body = translate(TEXT)
    events = parse(body)
    assert_well_formed(events)
    assert types_of(events) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = final_message(body)
    assert message.model == "claude-x" and message.id.startswith("msg_")
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "text", "text": "Sunny, 20 C"}
    ]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (120, 30)


def test_message_start_holds_the_estimate_and_both_counts():
    start = parse(MessagesStream("claude-x", NAMES, ESTIMATE).opening())[0]
    assert start["message"]["usage"]["input_tokens"] == ESTIMATE
    assert start["message"]["usage"]["output_tokens"] in (0, 1)
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    assert start["message"]["model"] == "claude-x"


def test_keepalive_is_a_ping_event():
    assert MessagesStream("m", NAMES, 1).keepalive() == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_bug1_reasoning_is_its_own_thinking_block_and_message_start_is_sent_once():
    body = translate(THINK_THEN_TEXT)
    events = parse(body)
    assert_well_formed(events)
    starts = [event["content_block"]["type"] for event in events if event["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking_deltas = [event["delta"] for event in events if event.get("index") == 0 and "delta" in event]
    assert thinking_deltas == [
        {"type": "thinking_delta", "thinking": "The user"},
        {"type": "thinking_delta", "thinking": " wants weather."},
        {"type": "signature_delta", "signature": ""},
    ]
    message = final_message(body)
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": ""},
        {"type": "text", "text": "Sunny"},
    ]


def test_bug2_no_empty_text_block_is_opened_up_front():
    """A thinking answer's first block is the thinking block: the role chunk's "" opens nothing."""
    events = parse(translate(THINK_THEN_TEXT))
    assert events[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    }
    assert (
        parse(translate([ROLE, chunk(tool_calls=[call_delta(0, "{}", "call_1", "f")]), chunk("tool_calls")]))[1][
            "content_block"
        ]["type"]
        == "tool_use"
    )


def test_bug3_the_first_token_of_each_new_block_is_kept():
    chunks = [
        chunk(reasoning_content="A"),
        chunk(content="B"),
        chunk(reasoning_content="C"),
        chunk(tool_calls=[call_delta(0, '{"x":1}', "call_1", "f")]),
        chunk(content="D"),
        chunk("stop"),
    ]
    body = translate(chunks)
    assert_well_formed(parse(body))
    content = [block.model_dump(exclude_none=True) for block in final_message(body).content]
    assert content == [
        {"type": "thinking", "thinking": "A", "signature": ""},
        {"type": "text", "text": "B"},
        {"type": "thinking", "thinking": "C", "signature": ""},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}},
        {"type": "text", "text": "D"},
    ]


def test_bug4_a_chunk_with_content_and_finish_reason_keeps_its_content():
    body = translate([chunk("stop", reasoning_content="think", content="All of it"), usage_chunk()])
    events = parse(body)
    assert_well_formed(events)
    message = final_message(body)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[1].text == "All of it"
    # The same when the usage rides on that chunk too (one chunk ends everything).
    last = {**chunk("tool_calls", tool_calls=[call_delta(0, '{"a":1}', "call_1", "f")]), "usage": USAGE}
    message = final_message(translate([last], end=False))
    assert message.content[0].input == {"a": 1} and message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 30


def test_bug5_message_delta_carries_cumulative_usage_held_until_the_usage_chunk():
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 100}}
    stream = MessagesStream("claude-x", NAMES, ESTIMATE)
    head = stream.opening() + stream.event(chunk(content="Hi")) + stream.event(chunk("stop"))
    assert "message_delta" not in types_of(parse(head)), "held until the usage is known"
    tail = stream.event(usage_chunk(usage))
    delta, stop = parse(tail)
    assert delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "output_tokens": 30,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
        },
    }
    assert stop == {"type": "message_stop"}
    assert stream.done() == b"", "nothing after message_stop"
    usage_seen = final_message(head + tail).usage
    assert (usage_seen.input_tokens, usage_seen.output_tokens, usage_seen.cache_read_input_tokens) == (20, 30, 100)


def test_bug5_without_a_usage_chunk_done_sends_an_estimate_not_zero():
    body = translate([ROLE, chunk(content="x" * 40), chunk("stop")])
    events = parse(body)
    assert events[-2]["usage"] == {"output_tokens": 10}
    usage = final_message(body).usage
    assert (usage.input_tokens, usage.output_tokens) == (ESTIMATE, 10)


@pytest.mark.parametrize(
    ("chunks", "calls"),
    [
        pytest.param(
            OPENAI_CALLS, [("call_1", "get_weather", {"city": "Oslo"}), ("call_2", "get_time", {})], id="openai"
        ),
        pytest.param(
            GEMINI_CALLS, [("call_a", "get_weather", {"city": "Oslo"}), ("call_b", "get_time", {})], id="gemini"
        ),
        pytest.param(INTERLEAVED_CALLS, [("call_1", "f", {"a": 1}), ("call_2", "g", {"b": 2})], id="interleaved"),
    ],
)
def test_each_tool_call_is_one_tool_use_block(chunks, calls):
    body = translate(chunks)
    assert_well_formed(parse(body))
    message = final_message(body)
    tool_uses = [(block.id, block.name, block.input) for block in message.content if block.type == "tool_use"]
    assert tool_uses == calls
    assert message.stop_reason == "tool_use"


def test_sequential_calls_stream_their_arguments_as_they_come():
    events = parse(translate(OPENAI_CALLS))
    fragments = [event["delta"]["partial_json"] for event in events if event["type"] == "content_block_delta"]
    assert fragments == ['{"city":', '"Oslo"}', "{}"]
    # The first call's block stops as soon as the second starts: nothing waits for the end.
    stops = [position for position, event in enumerate(events) if event["type"] == "content_block_stop"]
    second_start = [position for position, event in enumerate(events) if event["type"] == "content_block_start"][1]
    assert stops[0] < second_start


def test_bug14_a_vendor_that_sends_whole_calls_still_fills_input():
    """Gemini sends each call whole in one chunk: the block still gets its input."""
    body = translate(GEMINI_CALLS)
    events = parse(body)
    starts = [event["content_block"] for event in events if event["type"] == "content_block_start"]
    assert starts[1] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}
    assert final_message(body).content[1].input == {"city": "Oslo"}


def test_bug11_streamed_tool_names_are_the_clients():
    long_name = "mcp__server__" + "x" * 70
    names = ToolNames.of([long_name])
    chunks = [chunk(tool_calls=[call_delta(0, "{}", "call_1", names.vendor(long_name))]), chunk("tool_calls")]
    assert final_message(translate(chunks, names)).content[0].name == long_name


def test_bug15_reasoning_only_stream_is_not_empty():
    body = translate([chunk(reasoning_content="42 because..."), chunk("stop"), usage_chunk()])
    content = final_message(body).content
    assert [block.model_dump(exclude_none=True) for block in content] == [
        {"type": "thinking", "thinking": "42 because...", "signature": ""}
    ]


def test_bug17_tool_arguments_that_end_not_a_json_object_make_the_answer_unusable():
    stream = MessagesStream("m", NAMES, 1)
    stream.opening()
    stream.event(chunk(tool_calls=[call_delta(0, '{"a": tru', "call_1", "f")]))
    with pytest.raises(UnusableAnswer):
        stream.event(chunk("tool_calls"))
    stream = MessagesStream("m", NAMES, 1)
    stream.event(chunk(tool_calls=[call_delta(0, "[1]", "call_1", "f")]))
    with pytest.raises(UnusableAnswer):
        stream.done()


def test_refusal_and_content_filter_end_as_a_refusal():
    body = translate([chunk(refusal="I can't help with that."), chunk("content_filter")])
    message = final_message(body)
    assert message.content[0].text == "I can't help with that." and message.stop_reason == "refusal"


def test_length_ends_as_max_tokens():
    assert final_message(translate([chunk(content="Once upon"), chunk("length")])).stop_reason == "max_tokens"


def test_done_closes_whatever_is_open_when_the_vendor_sent_no_finish():
    body = translate([chunk(content="Hi")])
    events = parse(body)
    assert_well_formed(events)
    assert types_of(events)[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_other_choices_and_role_only_chunks_bring_nothing():
    stream = MessagesStream("m", NAMES, 1)
    assert stream.event(ROLE) == b""
    other = chunk(content="other")
    other["choices"][0]["index"] = 1
    assert stream.event(other) == b""


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (UpstreamError("Vendor x dropped the connection."), "overloaded_error"),
        (VendorError(400, {"message": "no"}), "api_error"),
    ],
)
def test_failed_ends_the_stream_with_one_error_event_and_nothing_after(error, kind):
    stream = MessagesStream("claude-x", NAMES, ESTIMATE)
    head = stream.opening() + stream.event(chunk(content="Hal"))
    tail = stream.failed(error)
    assert parse(tail) == [{"type": "error", "error": {"type": kind, "message": error.message}}]
    assert stream.event(chunk(content="f")) == b"" and stream.done() == b"" and stream.failed(error) == b""
    with pytest.raises(anthropic.APIStatusError, match=error.message):
        final_message(head + tail)
