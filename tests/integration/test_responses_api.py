"""POST /v1/responses over real sockets: gunicorn + gevent router, fake vendor, official OpenAI SDK.

Each vendor is pinned in turn with ``?vendor=``; the fake plays Gemini with its quirks (tool calls
without ids, "stop" instead of "tool_calls", each streamed call in a chunk of its own).
"""

from __future__ import annotations

import itertools
import json
import time

import openai
import pytest
import requests

from tests.support.processes import wait_until
from tests.support.prometheus import scrape
from tests.support.sdk import sdk

VENDORS = ["openai", "gemini"]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get weather information for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "City name"}},
        "required": ["location"],
    },
}
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}


@pytest.fixture
def openai_client(router, fake) -> openai.OpenAI:
    """The SDK refusing any answer that lacks a field its models require, as OpenAI's own have them."""
    return sdk(router, _strict_response_validation=True)


def pinned(vendor: str) -> dict:
    return {"extra_query": {"vendor": vendor}}


def sent_to_vendor(fake, vendor: str) -> dict:
    """The chat-completions body the vendor received for the one request of this test."""
    [received] = fake.requests(vendor)
    assert received["endpoint"] == "chat"
    return received["body"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_create_with_a_string_input_answers_output_text(openai_client, fake, vendor):
    raw = openai_client.responses.with_raw_response.create(model="any-model", input="Hello", **pinned(vendor))
    response = raw.parse()
    assert response.output_text == f"Hello from {vendor}! You said: Hello"
    assert response.id.startswith("resp_") and response.object == "response"
    assert (response.model, response.status, response.store) == ("any-model", "completed", False)
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert raw.headers["x-vendor-source"] == vendor
    body = sent_to_vendor(fake, vendor)
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert body["model"] == raw.headers["x-model-source"]
    assert "input" not in body and "stream" not in body


@pytest.mark.parametrize("vendor", VENDORS)
def test_instructions_become_a_leading_system_message_and_are_echoed(openai_client, fake, vendor):
    response = openai_client.responses.create(
        model="any-model", instructions="Answer in one word.", input="Hello", **pinned(vendor)
    )
    assert response.instructions == "Answer in one word."
    assert sent_to_vendor(fake, vendor)["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Hello"},
    ]


@pytest.mark.parametrize("vendor", VENDORS)
def test_multi_turn_input_list_becomes_the_chat_history(openai_client, fake, vendor):
    response = openai_client.responses.create(
        model="any-model",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi, I am Ada."}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello Ada!", "annotations": []}],
            },
            {"role": "user", "content": "What is my name?"},
        ],
        **pinned(vendor),
    )
    assert response.output_text.endswith("You said: What is my name?")
    assert sent_to_vendor(fake, vendor)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi, I am Ada."}]},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]


@pytest.mark.parametrize("vendor", VENDORS)
def test_function_tool_round_trip_ends_in_a_final_text(openai_client, fake, vendor):
    conversation: list = [{"role": "user", "content": "What is the weather in Boston?"}]
    first = openai_client.responses.create(
        model="any-model", input=conversation, tools=[WEATHER_TOOL], **pinned(vendor)
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_"), "Gemini sends no id; the router gives every call one"
    assert call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"location": "example"}
    assert first.status == "completed" and first.output_text == ""

    # The client runs the tool and sends everything back, as the SDK documentation shows.
    conversation += first.output
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "22C and sunny"})
    fake.behave(vendor, tool_calls=False, content="It is 22C and sunny in Boston.")
    final = openai_client.responses.create(
        model="any-model", input=conversation, tools=[WEATHER_TOOL], **pinned(vendor)
    )
    assert final.output_text == "It is 22C and sunny in Boston."

    second = fake.requests(vendor)[-1]["body"]
    assert second["tools"] == [
        {
            "type": "function",
            "function": {k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")},
        }
    ]
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "22C and sunny"},
    ]


@pytest.mark.parametrize("vendor", VENDORS)
def test_stream_text_deltas_arrive_as_the_vendor_sends_them_and_the_final_response_has_usage(
    router, openai_client, fake, vendor
):
    fake.behave(vendor, chunks=5, interval=0.15)
    prompt_before = scrape(router.base).value("router_tokens_total", vendor=vendor, kind="prompt")
    arrivals: list[float] = []
    types: list[str] = []
    with openai_client.responses.stream(model="any-model", input="Write a short poem", **pinned(vendor)) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                arrivals.append(time.monotonic())
        final = stream.get_final_response()
    assert len(arrivals) == 5
    # Five events 150 ms apart: relayed one by one, they arrive over about 600 ms, not at once (a
    # busy machine may delay the first, never bring the last forward: at once would be ~0 s).
    assert arrivals[-1] - arrivals[0] >= 0.25
    # Spread out as sent (150 ms apart), not bunched at the end; one short gap is allowed for a
    # busy machine delaying one read.
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(gap >= 0.05 for gap in gaps) >= len(gaps) - 1, gaps
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed"
    assert final.output_text == f"Hello from {vendor}! You said: Write a short poem"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    body = sent_to_vendor(fake, vendor)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    # The usage chunk the router asked for is counted like a chat stream's.
    prompt_after = scrape(router.base).value("router_tokens_total", vendor=vendor, kind="prompt")
    assert prompt_after - prompt_before == final.usage.input_tokens


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_parallel_tool_calls_become_one_function_call_item_each(openai_client, fake, vendor, stream):
    fake.behave(vendor, parallel=3)
    request = {"model": "any-model", "input": "Weather in Boston, Paris and Oslo?", "tools": [WEATHER_TOOL]}
    if stream:
        added: list[int] = []
        with openai_client.responses.stream(**request, **pinned(vendor)) as events:
            for event in events:
                if event.type == "response.output_item.added":
                    added.append(event.output_index)
            response = events.get_final_response()
        assert added == [0, 1, 2]
    else:
        response = openai_client.responses.create(**request, **pinned(vendor))
    assert [item.type for item in response.output] == ["function_call"] * 3
    assert len({item.call_id for item in response.output}) == 3
    assert all(item.call_id.startswith("call_") for item in response.output)
    assert all(json.loads(item.arguments) == {"location": "example"} for item in response.output)
    assert response.status == "completed"


@pytest.mark.parametrize("vendor", VENDORS)
def test_text_format_json_schema_is_forwarded_as_response_format(openai_client, fake, vendor):
    text_format = {"type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}
    fake.behave(vendor, content='{"city": "Oslo", "celsius": 4}')
    response = openai_client.responses.create(
        model="any-model", input="Weather in Oslo as JSON", text={"format": text_format}, **pinned(vendor)
    )
    assert json.loads(response.output_text) == {"city": "Oslo", "celsius": 4}
    assert response.text.format.type == "json_schema" and response.text.format.name == "weather"
    assert sent_to_vendor(fake, vendor)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
    }


UNSUPPORTED = {
    "previous_response_id": ({"previous_response_id": "resp_123"}, "previous_response_id", "whole conversation"),
    "conversation": ({"conversation": "conv_123"}, "conversation", "whole conversation"),
    "background": ({"background": True}, "background", "nothing to poll"),
    "prompt": ({"prompt": {"id": "pmpt_123"}}, "prompt", "instructions"),
    "item_reference": ({"input": [{"type": "item_reference", "id": "msg_123"}]}, "input[0]", "item itself"),
    "web_search": ({"tools": [{"type": "web_search"}]}, "tools[0].type", "runs no tools"),
    "file_search": ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type", "runs no"),
    "code_interpreter": (
        {"tools": [WEATHER_TOOL, {"type": "code_interpreter", "container": {"type": "auto"}}]},
        "tools[1].type",
        "runs no tools",
    ),
    "computer_use_preview": (
        {
            "tools": [
                {"type": "computer_use_preview", "display_width": 800, "display_height": 600, "environment": "linux"}
            ]
        },
        "tools[0].type",
        "runs no tools",
    ),
    "mcp": ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x.test"}]}, "tools[0].type", "runs"),
    "image_generation": ({"tools": [{"type": "image_generation"}]}, "tools[0].type", "runs no tools"),
    "local_shell": ({"tools": [{"type": "local_shell"}]}, "tools[0].type", "function tool"),
    "custom": ({"tools": [{"type": "custom", "name": "grep"}]}, "tools[0].type", "function tool"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_every_unsupported_field_answers_400_naming_it(openai_client, fake, case):
    fields, param, advice = UNSUPPORTED[case]
    request = {"model": "any-model", "input": "Hello", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(**request)
    error = caught.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert advice in error["message"]
    assert fake.requests() == [], "nothing reaches a vendor"


def test_invalid_fields_answer_400_with_the_path_of_the_bad_value(openai_client, fake):
    bad = [
        ({"input": [{"role": "user", "content": "Hi"}, {"type": "function_call_output"}]}, "input[1].call_id"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": "Hi", "tools": [{**WEATHER_TOOL, "name": "get weather"}]}, "tools[0].name"),
        ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
    ]
    for fields, param in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            openai_client.responses.create(model="any-model", **fields)
        assert caught.value.body["param"] == param, fields
    assert fake.requests() == []


def test_retrieving_a_response_is_404_because_none_is_stored(openai_client, fake):
    answer = openai_client.responses.create(model="any-model", input="Hello")
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.retrieve(answer.id)
    assert caught.value.body["type"] == "invalid_request_error"
    assert "never stores" in caught.value.body["message"]


def test_a_vendor_failing_before_the_first_event_is_failed_over_unnoticed(start_router, fake):
    fake.behave("openai", drop_after=0)  # the role chunk, then the connection closes
    server = start_router(COOLDOWN_SECONDS="0")
    client = sdk(server, _strict_response_validation=True)
    for _ in range(30):
        raw = client.responses.with_raw_response.create(model="any-model", input="Hello", stream=True)
        types = [event.type for event in raw.parse()]
        assert raw.headers["x-vendor-source"] == "gemini"
        assert types[0] == "response.created" and types[-1] == "response.completed"
        assert types.count("response.created") == 1
        if raw.headers["x-router-attempts"] == "2":
            break  # the router chose the failing vendor first, and the client never saw it
    else:
        pytest.fail("the router never chose the failing vendor first in 30 requests")
    assert fake.requests("openai")


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        ({"drop_after": 3}, "openai"),
        ({"error_event_after": 3, "error_event": {"message": "Model overloaded", "code": 503}}, "Model overloaded"),
    ],
    ids=["dropped", "error_event"],
)
def test_a_vendor_failing_after_the_first_event_makes_the_sdk_raise(openai_client, fake, behaviour, words):
    # Events 50 ms apart: the failure comes after the stream is committed, not in the same read as
    # its first event (that would be a failure before commit, answered as an error status).
    fake.behave("openai", chunks=10, interval=0.05, **behaviour)
    deltas: list[str] = []
    with (
        pytest.raises(openai.APIError) as caught,
        openai_client.responses.stream(model="any-model", input="Hello", **pinned("openai")) as stream,
    ):
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert len(deltas) == 3, "what arrived before the failure reached the client"
    assert words in caught.value.message


def test_stream_is_server_sent_events_with_named_events_and_no_done_marker(router, fake):
    response = requests.post(
        router.url("/v1/responses"),
        json={"model": "any-model", "input": "Hello", "stream": True},
        stream=True,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    blocks = response.content.decode().strip().split("\n\n")
    assert "[DONE]" not in blocks[-1]
    for number, block in enumerate(blocks):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        assert event["sequence_number"] == number


def test_keepalive_comments_flow_while_the_vendor_is_silent_and_the_sdk_ignores_them(start_router, fake):
    fake.behave("openai", chunks=4, stall_after=2, stall=1.6)
    server = start_router(STREAM_KEEPALIVE_SECONDS="0.3", models=[{"vendor": "openai", "model": "gpt-4o"}])
    body = {"model": "any-model", "input": "Hello", "stream": True}
    raw = requests.post(server.url("/v1/responses"), json=body, timeout=30).text
    assert raw.count(": keep-alive\n\n") >= 3
    with sdk(server).responses.stream(model="any-model", input="Hello") as stream:
        assert stream.get_final_response().output_text == "Hello from openai! You said: Hello"


def test_a_client_leaving_mid_stream_closes_the_vendor_connection(start_router, fake):
    fake.behave("openai", chunks=20, interval=1.0)
    server = start_router(STREAM_KEEPALIVE_SECONDS="30", models=[{"vendor": "openai", "model": "gpt-4o"}])
    body = {"model": "any-model", "input": "Hello", "stream": True}
    response = requests.post(server.url("/v1/responses"), json=body, stream=True, timeout=30)
    seen = b""
    for piece in response.iter_content(chunk_size=None):
        seen += piece
        if seen.count(b"event: response.output_text.delta") >= 2:
            break
    response.close()
    closed_at = time.time()
    [stream] = wait_until(lambda: [s for s in fake.streams("openai") if s["client_closed_at"]], timeout=5)
    assert stream["client_closed_at"] - closed_at < 2.0
    assert stream["events_sent"] < 10
