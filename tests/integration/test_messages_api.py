"""POST /v1/messages over real sockets: gunicorn + gevent router, fake vendor, the official anthropic SDK.

Each vendor is pinned in turn with ``?vendor=``; the fake plays Gemini with its quirks (tool calls
without ids, "stop" instead of "tool_calls", each streamed call in a chunk of its own).
"""

from __future__ import annotations

import base64
import json
import re

import anthropic
import pytest
import requests

from tests.support.processes import wait_until
from tests.support.scripted_vendor import ScriptedVendor, send_whole

VENDORS = ["openai", "gemini"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get weather information for a location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}
# A 1x1 PNG, as Claude Code sends screenshots: base64 in an image block.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


def messages_client(router, **options) -> anthropic.Anthropic:
    """The SDK pointed at the router, with no retries of its own (a retry would hide a status)."""
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=router.base, api_key="unused", **options)


@pytest.fixture
def client(router, fake) -> anthropic.Anthropic:
    return messages_client(router)


def pinned(vendor: str) -> dict:
    return {"extra_query": {"vendor": vendor}}


def final_message(client: anthropic.Anthropic, request: dict, stream: bool) -> anthropic.types.Message:
    """The SDK's Message for ``request``: streamed and assembled by the SDK, or whole."""
    if stream:
        with client.messages.stream(**request) as events:
            return events.get_final_message()
    return client.messages.create(**request)


def sent_to_vendor(fake, vendor: str) -> dict:
    """The request the vendor received for the one request of this test."""
    [received] = fake.requests(vendor)
    assert received["endpoint"] == "chat"
    return received


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_whole_message_answers_text_with_usage_and_the_requested_model(client, fake, vendor):
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-router",
        max_tokens=4096,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"},
        **pinned(vendor),
    )
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-sonnet-router"
    [block] = message.content
    assert block.type == "text" and block.text == f"Hello from {vendor}! You said: Hello"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["x-vendor-source"] == vendor
    received = sent_to_vendor(fake, vendor)
    body = received["body"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert body["model"] == raw.headers["x-model-source"]
    assert "system" not in body and "max_tokens" not in body and "cache_control" not in json.dumps(body)
    # Anthropic's own headers never reach another vendor (OpenAI answers 400 "invalid beta flag").
    assert not any(name.startswith("anthropic-") for name in received["headers"])


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_streamed_message_arrives_as_anthropic_events_and_the_final_message_has_usage(client, fake, vendor):
    with client.messages.stream(
        model="claude-sonnet-router",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Hello"}],
        **pinned(vendor),
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == f"Hello from {vendor}! You said: Hello"
    assert [block.type for block in final.content] == ["text"]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    body = sent_to_vendor(fake, vendor)["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def raw_events(router, vendor: str, body: dict) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a streamed answer, read off the wire."""
    response = requests.post(
        f"{router.base}/v1/messages", params={"vendor": vendor}, json=body, stream=True, timeout=30
    )
    assert response.status_code == 200, response.text
    events, name = [], None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


@pytest.mark.parametrize("vendor", VENDORS)
def test_stream_events_follow_the_messages_state_machine(router, fake, vendor):
    body = {"model": "any-model", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    events = raw_events(router, vendor, body)
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events), "event: always equals data.type"
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[1] == "content_block_start", "no ping or empty block before the first content"
    assert names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert {"input_tokens", "output_tokens"} <= start["usage"].keys()
    assert events[-2][1]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip_keeps_ids_and_carries_the_result_back(client, fake, vendor, stream):
    request = {
        "model": "any-model",
        "max_tokens": 256,
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        **pinned(vendor),
    }
    first = final_message(client, request, stream)
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"location": "example"}
    assert call.id
    fake.reset()
    follow_up = {
        **request,
        "tool_choice": {"type": "none"},
        "messages": [
            *request["messages"],
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"},
                    {"type": "text", "text": "Thanks, and tomorrow?"},
                ],
            },
        ],
    }
    answer = client.messages.create(**follow_up)
    assert answer.stop_reason == "end_turn"
    messages = sent_to_vendor(fake, vendor)["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[1]["tool_calls"][0]["id"] == call.id
    assert messages[2] == {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}


@pytest.mark.parametrize("vendor", VENDORS)
def test_parallel_tool_calls_each_become_their_own_tool_use_block_in_a_stream(client, fake, vendor):
    fake.behave(vendor, parallel=2, content_delay=0.01)
    weather_elsewhere = {**WEATHER_TOOL, "name": "get_forecast"}
    with client.messages.stream(
        model="any-model",
        max_tokens=256,
        tools=[WEATHER_TOOL, weather_elsewhere],
        messages=[{"role": "user", "content": "Weather in Oslo and tomorrow?"}],
        **pinned(vendor),
    ) as stream:
        final = stream.get_final_message()
    calls = [block for block in final.content if block.type == "tool_use"]
    assert [call.name for call in calls] == ["get_weather", "get_forecast"]
    assert all(call.input == {"location": "example"} for call in calls)
    assert len({call.id for call in calls}) == 2


@pytest.mark.parametrize("vendor", VENDORS)
def test_an_image_block_reaches_the_vendor_as_an_image_part(client, fake, vendor):
    client.messages.create(
        model="any-model",
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                ],
            }
        ],
        **pinned(vendor),
    )
    [message] = sent_to_vendor(fake, vendor)["body"]["messages"]
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}


def test_an_image_never_reaches_a_model_without_image_support(start_router, fake):
    models = [
        {"vendor": "openai", "model": "text-only", "config": {"support_image": False}},
        {"vendor": "gemini", "model": "gemini-2.0-flash"},
    ]
    router = start_router(models=models)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}
    for _ in range(6):
        messages_client(router).messages.create(
            model="any-model", max_tokens=16, messages=[{"role": "user", "content": [image]}]
        )
    assert {received["vendor"] for received in fake.requests()} == {"gemini"}


def test_errors_are_anthropic_shaped_and_raised_as_the_sdks_own_classes(start_router, fake):
    router = start_router(ROUTER_API_KEYS="sk-client-messages-0123456789")
    keyless = messages_client(router)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        keyless.messages.create(model="any-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"
    assert caught.value.body["request_id"]
    keyed = anthropic.Anthropic(base_url=router.base, api_key="sk-client-messages-0123456789", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        keyed.messages.create(model="any-model", max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error" and "max_tokens" in error["message"]
    # The same key as a bearer token (Claude Code's ANTHROPIC_AUTH_TOKEN) works too.
    bearer = anthropic.Anthropic(base_url=router.base, auth_token="sk-client-messages-0123456789", max_retries=0)
    assert bearer.messages.create(model="any-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    fake.behave("openai", status=503)
    fake.behave("gemini", status=500)
    with pytest.raises(anthropic.OverloadedError) as caught:
        keyed.messages.create(model="any-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 529
    assert caught.value.response.headers["retry-after"]
    # A stream that fails before commit is an HTTP error too, never a 200 with an error event.
    response = requests.post(
        f"{router.base}/v1/messages",
        headers={"x-api-key": "sk-client-messages-0123456789"},
        json={"model": "any-model", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert response.status_code == 529 and response.json()["error"]["type"] == "overloaded_error"


def test_a_vendors_own_400_keeps_its_message(client, fake):
    fake.behave("openai", status=400, error_message="Invalid value for 'temperature'")
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="any-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}], **pinned("openai")
        )
    assert "Invalid value for 'temperature'" in caught.value.body["error"]["message"]


def test_unknown_urls_under_messages_answer_anthropic_404s(router):
    response = requests.get(f"{router.base}/v1/messages/nothing-here", timeout=10)
    assert response.status_code == 404
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "not_found_error"


def test_count_tokens_estimates_without_calling_a_vendor(client, fake):
    counted = client.messages.count_tokens(
        model="any-model", messages=[{"role": "user", "content": "Hello there, how are you today?"}]
    )
    assert counted.input_tokens > 0
    assert fake.requests() == []


def test_a_stream_broken_after_commit_ends_with_one_error_event(router, fake):
    fake.behave("openai", drop_after=2, content_delay=0.05)
    body = {"model": "any-model", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    events = raw_events(router, "openai", body)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] in ("overloaded_error", "api_error")
    assert "message_stop" not in [name for name, _ in events]


def test_silence_is_filled_with_ping_events_after_message_start(start_router, fake):
    router = start_router(STREAM_KEEPALIVE_SECONDS="0.5")
    fake.behave("openai", stall_after=1, stall=1.6)
    body = {"model": "any-model", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    events = raw_events(router, "openai", body)
    names = [name for name, _ in events]
    assert "ping" in names and names.index("ping") > names.index("message_start")
    assert all(data == {"type": "ping"} for name, data in events if name == "ping")
    assert names[-1] == "message_stop"


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_vendors_reasoning_content_becomes_a_thinking_block_before_the_text(client, fake, vendor, stream):
    fake.behave(vendor, reasoning="First, greet back.")
    request = {
        "model": "any-model",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
        **pinned(vendor),
    }
    message = final_message(client, request, stream)
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "First, greet back."
    assert text.type == "text" and text.text == f"Hello from {vendor}! You said: Hello"


def test_thinking_reaches_only_models_configured_for_reasoning(start_router, fake):
    models = [
        {
            "vendor": "openai",
            "model": "o-reasoner",
            "aliases": ["claude-opus-router"],
            "max_output_tokens": 1000,
            "config": {"support_reasoning": True},
        },
        {"vendor": "gemini", "model": "gemini-2.0-flash", "aliases": ["claude-haiku-router"]},
    ]
    router = start_router(models=models)
    client = messages_client(router)
    for alias in ("claude-opus-router", "claude-haiku-router"):
        client.messages.create(
            model=alias,
            max_tokens=20000,
            thinking={"type": "adaptive"},
            output_config={"effort": "max"},
            messages=[{"role": "user", "content": "Hi"}],
        )
    opus, haiku = (received["body"] for received in fake.requests())
    assert (opus["model"], opus["reasoning_effort"], opus["max_completion_tokens"]) == ("o-reasoner", "high", 1000)
    assert haiku["model"] == "gemini-2.0-flash" and "reasoning_effort" not in haiku
    assert haiku["max_completion_tokens"] == 20000


def test_the_agent_session_is_named_on_the_access_line(router, client):
    client.messages.create(
        model="any-model",
        max_tokens=16,
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"X-Claude-Code-Session-Id": "5b0c6a86-2f1e-4d1c-9c7e-0d6b1f2c3a4b"},
    )
    wait_until(lambda: "session=5b0c6a86-2f1e-4d1c-9c7e-0d6b1f2c3a4b" in router.logs(), timeout=5)


LONG_TOOL = {**WEATHER_TOOL, "name": "mcp__weather-service.example__get_the_current_weather_for_any_city_on_earth"}


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_name_a_vendor_would_refuse_is_renamed_on_the_way_and_named_back(client, fake, vendor, stream):
    request = {
        "model": "any-model",
        "max_tokens": 256,
        "tools": [LONG_TOOL],
        "tool_choice": {"type": "tool", "name": LONG_TOOL["name"]},
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        **pinned(vendor),
    }
    message = final_message(client, request, stream)
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == LONG_TOOL["name"]
    sent = sent_to_vendor(fake, vendor)["body"]
    [tool] = sent["tools"]
    safe = tool["function"]["name"]
    assert len(safe) <= 64 and re.fullmatch(r"[A-Za-z0-9_-]+", safe)
    assert sent["tool_choice"] == {"type": "function", "function": {"name": safe}}


def bad_arguments_vendor() -> ScriptedVendor:
    """A vendor whose every answer is a tool call with arguments that are not a JSON object."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
    }
    body = json.dumps(completion).encode()

    return ScriptedVendor(lambda handler: send_whole(handler, 200, "application/json", body))


def test_tool_arguments_that_are_not_a_json_object_fail_over_instead_of_a_500(start_router, fake):
    broken = bad_arguments_vendor()
    try:
        router = start_router(
            models=[{"vendor": "openai", "model": "gpt-4o", "weight": 1000}, {"vendor": "gemini", "model": "flash"}],
            OPENAI_BASE_URL=broken.url,
        )
        request = {"max_tokens": 64, "tools": [WEATHER_TOOL], "messages": [{"role": "user", "content": "Oslo?"}]}
        answer = messages_client(router).messages.create(model="any-model", **request)
        [call] = [block for block in answer.content if block.type == "tool_use"]
        assert call.input == {"location": "example"}, "the Gemini vendor answered after the broken one"
        assert broken.calls == 1
        # Pinned to the broken model there is nothing else to try: the client is told, never a 500.
        with pytest.raises(anthropic.APIStatusError) as caught:
            messages_client(router).messages.create(model="gpt-4o", **request)
        assert caught.value.status_code != 500
        assert "JSON object" in caught.value.body["error"]["message"]
    finally:
        broken.stop()
