"""Streamed answers: the Responses events each sequence of normalized chat chunks becomes.

Beyond the tables, the translator's bytes are read by the official openai SDK (its SSE decoder,
event models with strict validation, and its Responses stream accumulator) to show that
``get_final_response()``, ``output_text`` and mid-stream errors behave as against OpenAI.
"""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from app.errors import UpstreamError
from app.responses.stream import ResponsesStream

REQUEST = {"model": "any-model", "input": "Weather in Oslo?", "stream": True}
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def chunk(finish_reason=None, **delta):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1735000000,
        "model": "any-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def call_delta(index, arguments, call_id=None, name=None):
    call = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return call


USAGE_CHUNK = {**chunk(), "choices": [], "usage": USAGE}
ROLE = chunk(role="assistant", content="")
TEXT = [ROLE, chunk(content="Sunny"), chunk(content=", 20 C"), chunk("stop"), USAGE_CHUNK]
# OpenAI streams one call after the other, arguments in pieces.
OPENAI_CALLS = [
    ROLE,
    chunk(tool_calls=[call_delta(0, "", "call_1", "get_weather")]),
    chunk(tool_calls=[call_delta(0, '{"city":')]),
    chunk(tool_calls=[call_delta(0, '"Oslo"}')]),
    chunk(tool_calls=[call_delta(1, "", "call_2", "get_time")]),
    chunk(tool_calls=[call_delta(1, "{}")]),
    chunk("tool_calls"),
    USAGE_CHUNK,
]
# Gemini (after normalization) sends each call whole, in its own chunk, after some text.
GEMINI_CALLS = [
    chunk(role="assistant", content="Let me check."),
    chunk(tool_calls=[call_delta(0, '{"city":"Oslo"}', "call_a", "get_weather")]),
    chunk("tool_calls", tool_calls=[call_delta(1, "{}", "call_b", "get_time")]),
    USAGE_CHUNK,
]
# Deltas of parallel calls may interleave; each still belongs to its own item.
INTERLEAVED_CALLS = [
    chunk(tool_calls=[call_delta(0, '{"a":', "call_1", "f"), call_delta(1, '{"b":', "call_2", "g")]),
    chunk(tool_calls=[call_delta(1, "2}")]),
    chunk(tool_calls=[call_delta(0, "1}")]),
    chunk("tool_calls"),
]

TEXT_ITEM = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def translate(chunks, request=REQUEST):
    stream = ResponsesStream(request, "any-model")
    return stream.opening() + b"".join(stream.event(item) for item in chunks) + stream.done()


def parse(body: bytes) -> list[dict]:
    """The events of an SSE body, checking each block is `event: <type>` then one data line."""
    events = []
    assert body.endswith(b"\n\n")
    for block in body.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        events.append(data)
    return events


def assert_well_formed(events: list[dict]) -> None:
    """The rules both official SDKs and Codex rely on."""
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    lifecycle = [event["response"]["id"] for event in events if event["type"].count(".") == 1]
    assert len(set(lifecycle)) == 1 and lifecycle[0].startswith("resp_")
    added: list[int] = []
    done: list[int] = []
    for event in events:
        index = event.get("output_index")
        if event["type"] == "response.output_item.added":
            assert index == len(added), "output_index counts items in the order they were added"
            added.append(index)
        elif index is not None:
            assert index in added, f"{event['type']} before its item was added"
            assert index not in done, f"{event['type']} after its item was done"
            if event["type"] == "response.output_item.done":
                done.append(index)
    if events[-1]["type"] in ("response.completed", "response.incomplete"):
        assert sorted(done) == added, "every added item is done"
        assert [item["id"] for item in events[-1]["response"]["output"]] == [
            event["item"]["id"] for event in events if event["type"] == "response.output_item.added"
        ]


@pytest.mark.parametrize(
    ("chunks", "types"),
    [
        pytest.param(TEXT, TEXT_ITEM, id="text"),
        pytest.param(
            OPENAI_CALLS,
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ],
            id="openai parallel calls",
        ),
        pytest.param(
            GEMINI_CALLS,
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ],
            id="gemini text then whole calls: the message is done before the first call",
        ),
        pytest.param(
            [ROLE, chunk(refusal="I can't"), chunk(refusal=" help."), chunk("stop")],
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.refusal.delta",
                "response.refusal.delta",
                "response.refusal.done",
                "response.content_part.done",
                "response.output_item.done",
            ],
            id="refusal",
        ),
        pytest.param(
            [chunk("stop")],
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
            ],
            id="an empty answer is one empty message, as when whole",
        ),
    ],
)
def test_event_sequence_for_each_kind_of_answer(chunks, types):
    events = parse(translate(chunks))
    assert_well_formed(events)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        *types,
        "response.completed",
    ]


def test_text_deltas_carry_the_text_and_done_events_the_whole():
    events = parse(translate(TEXT))
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    assert [event["delta"] for event in deltas] == ["Sunny", ", 20 C"]
    assert all(event["logprobs"] == [] and event["content_index"] == 0 for event in deltas)
    (text_done,) = [event for event in events if event["type"] == "response.output_text.done"]
    assert text_done["text"] == "Sunny, 20 C"
    (item_done,) = [event for event in events if event["type"] == "response.output_item.done"]
    assert item_done["item"]["status"] == "completed"
    assert item_done["item"]["content"] == [{"type": "output_text", "text": "Sunny, 20 C", "annotations": []}]


def test_lifecycle_events_start_in_progress_and_completed_holds_everything():
    events = parse(translate(TEXT))
    for event in events[:2]:
        assert event["response"]["status"] == "in_progress"
        assert event["response"]["output"] == []
        assert event["response"]["usage"] is None
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["model"] == "any-model"
    assert completed["store"] is False
    assert completed["output"][0]["content"][0]["text"] == "Sunny, 20 C"
    assert completed["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    }


def test_without_a_usage_chunk_no_usage_is_invented():
    events = parse(translate(TEXT[:-1]))
    assert events[-1]["response"]["usage"] is None


@pytest.mark.parametrize(
    ("chunks", "calls"),
    [
        pytest.param(
            OPENAI_CALLS, [("call_1", "get_weather", '{"city":"Oslo"}'), ("call_2", "get_time", "{}")], id="openai"
        ),
        pytest.param(
            GEMINI_CALLS, [("call_a", "get_weather", '{"city":"Oslo"}'), ("call_b", "get_time", "{}")], id="gemini"
        ),
        pytest.param(INTERLEAVED_CALLS, [("call_1", "f", '{"a":1}'), ("call_2", "g", '{"b":2}')], id="interleaved"),
    ],
)
def test_each_tool_call_index_is_one_function_call_item(chunks, calls):
    events = parse(translate(chunks))
    assert_well_formed(events)
    done = [
        event["item"]
        for event in events
        if event["type"] == "response.output_item.done" and event["item"]["type"] == "function_call"
    ]
    assert [(item["call_id"], item["name"], item["arguments"]) for item in done] == calls
    assert all(item["status"] == "completed" and item["id"].startswith("fc_") for item in done)
    arguments_done = [
        event["arguments"] for event in events if event["type"] == "response.function_call_arguments.done"
    ]
    assert arguments_done == [arguments for _, _, arguments in calls]
    final = [item for item in events[-1]["response"]["output"] if item["type"] == "function_call"]
    assert final == done


def test_events_flow_as_chunks_arrive():
    stream = ResponsesStream(REQUEST, "any-model")
    start = parse(stream.opening())
    assert [event["type"] for event in start] == ["response.created", "response.in_progress"]
    assert stream.event(chunk(role="assistant")) == b"", "a role-only chunk brings no event"
    first = parse(stream.event(chunk(content="Sun")))
    assert [event["type"] for event in first] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert [event["sequence_number"] for event in first] == [2, 3, 4]
    second = parse(stream.event(chunk(content="ny")))
    assert [(event["type"], event["delta"]) for event in second] == [("response.output_text.delta", "ny")]
    assert stream.event(chunk("stop")) == b"", "the finish_reason waits for the end of the stream"
    assert stream.event(USAGE_CHUNK) == b""
    assert parse(stream.done())[-1]["response"]["usage"]["total_tokens"] == 17


@pytest.mark.parametrize(
    ("finish_reason", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_short_answer_ends_with_response_incomplete(finish_reason, reason):
    events = parse(translate([ROLE, chunk(content="Sunny and"), chunk(finish_reason)]))
    assert_well_formed(events)
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": reason}
    (item_done,) = [event for event in events if event["type"] == "response.output_item.done"]
    assert item_done["item"]["status"] == "incomplete"


VENDOR_FAILURE = {
    "message": "openai/gpt-4o dropped the connection mid-stream",
    "type": "upstream_error",
    "param": None,
    "code": "bad_gateway",
}


FAILURE = UpstreamError(VENDOR_FAILURE["message"])


def test_a_vendor_failure_ends_with_an_error_event_then_response_failed():
    stream = ResponsesStream(REQUEST, "any-model")
    body = stream.opening() + stream.event(ROLE) + stream.event(chunk(content="Sun")) + stream.failed(FAILURE)
    events = parse(body)
    assert_well_formed(events)
    error, failed = events[-2:]
    assert error["type"] == "error"
    assert error["error"] == VENDOR_FAILURE
    assert (error["message"], error["code"], error["param"]) == (VENDOR_FAILURE["message"], "bad_gateway", None)
    assert failed["type"] == "response.failed"
    response = failed["response"]
    assert response["status"] == "failed"
    assert response["error"] == {"code": "server_error", "message": VENDOR_FAILURE["message"]}
    assert response["id"] == events[0]["response"]["id"]
    (message,) = response["output"]
    assert message["status"] == "incomplete"
    assert message["content"][0]["text"] == "Sun"


# -- the official SDK reading the translator's bytes ----------------------------------------------


def sdk_client(body: bytes) -> OpenAI:
    """An OpenAI client whose every request is answered with ``body`` as an event stream."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return OpenAI(
        api_key="sk-test",
        base_url="http://router.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
        _strict_response_validation=True,
        max_retries=0,
    )


def test_sdk_stream_accumulates_text_and_usage():
    client = sdk_client(translate(TEXT))
    with client.responses.stream(model="any-model", input="Weather in Oslo?") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Sunny", ", 20 C"]
    assert final.output_text == "Sunny, 20 C"
    assert final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (12, 5, 17)


@pytest.mark.parametrize("chunks", [OPENAI_CALLS, GEMINI_CALLS, INTERLEAVED_CALLS], ids=["openai", "gemini", "mixed"])
def test_sdk_stream_accumulates_parallel_function_calls(chunks):
    client = sdk_client(translate(chunks))
    with client.responses.stream(model="any-model", input="x") as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 2
    assert len({call.call_id for call in calls}) == 2
    for call in calls:
        json.loads(call.arguments)


def test_sdk_raises_when_the_vendor_fails_mid_stream():
    stream = ResponsesStream(REQUEST, "any-model")
    body = stream.opening() + stream.event(chunk(content="Sun")) + stream.failed(FAILURE)
    client = sdk_client(body)
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for event in client.responses.create(model="any-model", input="x", stream=True):
            seen.append(event.type)
    assert caught.value.message == VENDOR_FAILURE["message"]
    assert "response.output_text.delta" in seen, "the text before the failure reached the client"


def test_sdk_accepts_an_incomplete_stream_as_openai_sends_it():
    body = translate([ROLE, chunk(content="Sunny and"), chunk("length")])
    events = list(sdk_client(body).responses.create(model="any-model", input="x", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output[0].content[0].text == "Sunny and"


# Any order of what a normalized chat stream can carry: text, refusals, up to three parallel calls
# in pieces (a call's first delta has its id and name, as the normalizer guarantees), usage.
PIECES = st.lists(
    st.one_of(
        st.tuples(st.just("content"), st.text(max_size=4)),
        st.tuples(st.just("refusal"), st.text(max_size=4)),
        st.tuples(st.just("call"), st.integers(0, 2), st.text(max_size=4)),
        st.tuples(st.just("usage"), st.integers(0, 50)),
    ),
    max_size=12,
)


def chunks_of(pieces):
    started: set[int] = set()
    chunks = []
    for piece in pieces:
        if piece[0] == "call":
            _, index, arguments = piece
            first = index not in started
            started.add(index)
            call = (
                call_delta(index, arguments, f"call_{index}", f"tool_{index}")
                if first
                else call_delta(index, arguments)
            )
            chunks.append(chunk(tool_calls=[call]))
        elif piece[0] == "usage":
            chunks.append({**USAGE_CHUNK, "usage": {"prompt_tokens": piece[1], "completion_tokens": 1}})
        else:
            chunks.append(chunk(**{piece[0]: piece[1]}))
    return chunks


@settings(max_examples=200, deadline=None)
@given(PIECES, st.sampled_from(["stop", "tool_calls", "length", "content_filter"]))
def test_any_chunk_sequence_becomes_a_stream_the_sdk_accepts(pieces, finish_reason):
    body = translate([*chunks_of(pieces), chunk(finish_reason)])
    assert_well_formed(parse(body))
    # The SDK's accumulator checks the protocol as it goes (items added before their events, no
    # unfinished items at the end) and raises on any breach.
    with sdk_client(body).responses.stream(model="any-model", input="x") as stream:
        final = list(stream)[-1].response
        if finish_reason in ("stop", "tool_calls"):
            assert stream.get_final_response().id == final.id
    answered = "".join(
        part.text
        for item in final.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )
    assert answered == "".join(piece[1] for piece in pieces if piece[0] == "content")
    expected: dict[str, str] = {}
    for piece in pieces:
        if piece[0] == "call":
            expected[f"call_{piece[1]}"] = expected.get(f"call_{piece[1]}", "") + piece[2]
    assert {item.call_id: item.arguments for item in final.output if item.type == "function_call"} == expected


@settings(max_examples=100, deadline=None)
@given(PIECES)
def test_a_failure_after_any_chunk_sequence_makes_the_sdk_raise(pieces):
    stream = ResponsesStream(REQUEST, "any-model")
    body = stream.opening() + b"".join(stream.event(item) for item in chunks_of(pieces))
    body += stream.failed(FAILURE)
    assert_well_formed(parse(body))
    with pytest.raises(openai.APIError):
        list(sdk_client(body).responses.create(model="any-model", input="x", stream=True))
