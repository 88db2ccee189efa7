"""The chat endpoint over real sockets: gunicorn + gevent router, fake vendor, official OpenAI SDK."""

from __future__ import annotations

import json
import time
from collections import Counter

import openai
import pytest
import requests

from tests.support.keys import GEMINI_KEY, OPENAI_KEY
from tests.support.sdk import sdk

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather information for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City name"}},
            "required": ["location"],
        },
    },
}


def test_whole_answer_names_the_requested_model_and_the_chosen_vendor(openai_client, fake):
    raw = openai_client.chat.completions.with_raw_response.create(model="any-model", messages=HELLO)
    answer = raw.parse()
    assert answer.model == "any-model"
    assert answer.id and answer.object == "chat.completion" and answer.created > 0
    assert answer.choices[0].message.content.endswith("You said: Hello")
    vendor = raw.headers["x-vendor-source"]
    assert vendor in ("openai", "gemini")
    assert raw.headers["x-model-source"] == {"openai": "gpt-4o", "gemini": "gemini-2.0-flash"}[vendor]
    assert raw.headers["x-router-attempts"] == "1"
    assert raw.headers["x-request-id"]
    [received] = fake.requests()
    assert received["vendor"] == vendor
    assert received["body"]["model"] == raw.headers["x-model-source"]


def test_stream_delivers_chunks_with_one_id_and_the_requested_model(openai_client, fake):
    for vendor in ("openai", "gemini"):
        chunks = list(
            openai_client.chat.completions.create(
                model="my-app-model", messages=HELLO, stream=True, extra_query={"vendor": vendor}
            )
        )
        assert len({c.id for c in chunks}) == 1, vendor
        assert len({c.created for c in chunks}) == 1, vendor
        assert {c.model for c in chunks} == {"my-app-model"}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"Hello from {vendor}! You said: Hello"
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_headers_are_sse_and_end_with_done(router, fake):
    response = requests.post(
        router.url("/v1/chat/completions"),
        json={"model": "x", "messages": HELLO, "stream": True},
        stream=True,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    body = response.content.decode()
    assert body.endswith("data: [DONE]\n\n")
    assert all(block.startswith("data: ") for block in body.strip().split("\n\n"))


@pytest.mark.parametrize("vendor", ["openai", "gemini"])
def test_tool_call_whole_answer_has_ids_and_finish_reason_tool_calls(openai_client, fake, vendor):
    answer = openai_client.chat.completions.create(
        model="any-model",
        messages=[{"role": "user", "content": "What's the weather in Boston?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        extra_query={"vendor": vendor},
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "example"}


@pytest.mark.parametrize("vendor", ["openai", "gemini"])
def test_tool_call_stream_keeps_one_id_per_call(openai_client, fake, vendor):
    fake.behave(vendor, parallel=2)
    chunks = list(
        openai_client.chat.completions.create(
            model="any-model",
            messages=[{"role": "user", "content": "Weather in Boston and Paris?"}],
            tools=[WEATHER_TOOL],
            stream=True,
            extra_query={"vendor": vendor},
        )
    )
    ids: dict[int, set[str]] = {}
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert call.index is not None
            if call.id is not None:
                ids.setdefault(call.index, set()).add(call.id)
            arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
    assert sorted(ids) == [0, 1]
    assert all(len(found) == 1 and next(iter(found)).startswith("call_") for found in ids.values())
    assert ids[0] != ids[1]
    assert all(json.loads(text) == {"location": "example"} for text in arguments.values())
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_conversation_history_with_null_content_is_accepted(openai_client, fake):
    history = [
        {"role": "user", "content": "Weather in Boston?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Boston"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22C and sunny"},
    ]
    answer = openai_client.chat.completions.create(model="any-model", messages=history, tools=[WEATHER_TOOL])
    assert answer.choices[0].message is not None
    assert fake.requests()[0]["body"]["messages"] == history


def test_vendor_query_parameter_pins_the_vendor(openai_client, fake):
    for _ in range(10):
        raw = openai_client.chat.completions.with_raw_response.create(
            model="any-model", messages=HELLO, extra_query={"vendor": "gemini"}
        )
        assert raw.headers["x-vendor-source"] == "gemini"
    assert {r["vendor"] for r in fake.requests()} == {"gemini"}


def test_unknown_vendor_is_a_404_naming_it(openai_client, fake):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(model="any-model", messages=HELLO, extra_query={"vendor": "mistral"})
    assert "mistral" in caught.value.message
    assert fake.requests() == []


def test_configured_model_name_routes_to_that_model(openai_client, fake):
    for _ in range(10):
        answer = openai_client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert answer.model == "gemini-2.0-flash"
    assert {r["body"]["model"] for r in fake.requests()} == {"gemini-2.0-flash"}


def test_every_field_but_model_reaches_the_vendor_unchanged(router, fake):
    body = {
        "model": "any-model",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi \u4e16\u754c"}]}],
        "temperature": 0.25,
        "top_p": 0.9,
        "max_tokens": 17,
        "seed": 1234567890123,
        "stop": ["\n\n", "END"],
        "response_format": {"type": "json_object"},
        "stream_options": None,
        "parallel_tool_calls": False,
        "logit_bias": {"50256": -100},
        "user": "user-42",
        "vendor_specific": {"nested": [1, 2.5, None, True, "x"]},
    }
    response = requests.post(
        router.url("/v1/chat/completions"),
        json=body,
        headers={"Authorization": "Bearer client-secret-key-123", "Cookie": "session=abc", "X-Api-Key": "nope"},
        timeout=10,
    )
    assert response.status_code == 200
    [received] = fake.requests()
    expected = {**body, "model": received["body"]["model"]}
    assert received["body"] == expected
    assert list(received["body"]) == list(body), "field order is kept"
    headers = received["headers"]
    assert headers["authorization"] in (f"Bearer {OPENAI_KEY}", f"Bearer {GEMINI_KEY}")
    assert "cookie" not in headers and "x-api-key" not in headers
    assert headers["content-type"] == "application/json"


def test_calls_are_spread_evenly_over_every_credential_and_model(start_router, fake):
    server = start_router(
        models=[{"vendor": "openai", "model": "gpt-4o"}, {"vendor": "openai", "model": "gpt-4o-mini"}],
        credentials=[
            {"platform": "openai", "value": "sk-itest-first-aaaaaaaaaaaa"},
            {"platform": "openai", "value": "sk-itest-second-bbbbbbbbbbb"},
        ],
        workers=2,
    )
    client = sdk(server)
    calls = 400
    for _ in range(calls):
        client.chat.completions.create(model="any-model", messages=HELLO)
    counts = Counter((r["headers"]["authorization"], r["body"]["model"]) for r in fake.requests())
    assert len(counts) == 4
    expected = calls / 4
    chi_square = sum((n - expected) ** 2 / expected for n in counts.values())
    # 3 degrees of freedom: 16.27 is the 0.999 quantile.
    assert chi_square < 16.27, counts


def test_vendor_error_keeps_its_status_and_becomes_an_openai_error(openai_client, fake):
    fake.behave("gemini", status=400, error_message='Invalid JSON payload received. Unknown name "foo"')
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model="any-model", messages=HELLO, extra_query={"vendor": "gemini"})
    error = caught.value
    assert error.status_code == 400
    assert error.body["message"] == 'Invalid JSON payload received. Unknown name "foo"'
    assert error.body["type"] == "invalid_request_error"
    assert error.response.headers["x-vendor-source"] == "gemini"


def test_vendor_error_before_a_stream_is_json_not_sse(router, fake):
    fake.behave("openai", status=404, error_message="The model does not exist")
    response = requests.post(
        router.url("/v1/chat/completions?vendor=openai"),
        json={"model": "x", "messages": HELLO, "stream": True},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["message"] == "The model does not exist"


def test_stream_is_relayed_as_it_arrives_not_buffered(openai_client, fake):
    fake.behave("openai", content_chunks=[f"piece {i} " for i in range(10)], interval=0.15)
    started = time.monotonic()
    arrivals = []
    stream = openai_client.chat.completions.create(
        model="any-model", messages=HELLO, stream=True, extra_query={"vendor": "openai"}
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 10
    # The vendor spends ~1.65 s on the stream; a buffering relay would deliver all at the end.
    assert arrivals[-1] - arrivals[0] > 1.0
    assert arrivals[0] < 0.5


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("line_ending", ["\n", "\r\n", "\r"])
def test_stream_survives_split_reads_and_any_framing(openai_client, fake, framing, line_ending):
    pieces = ["Gr\u00fc\u00df", " \u4e16\u754c", " \U0001f600", " data: [DONE] is text", " end"]
    fake.behave("openai", content_chunks=pieces, split=3, split_delay=0.001, framing=framing, line_ending=line_ending)
    chunks = list(
        openai_client.chat.completions.create(model="m", messages=HELLO, stream=True, extra_query={"vendor": "openai"})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(pieces)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_close_delimited_stream_is_still_incremental(openai_client, fake):
    fake.behave("openai", chunks=6, interval=0.2, framing="close")
    started = time.monotonic()
    stream = openai_client.chat.completions.create(
        model="m", messages=HELLO, stream=True, extra_query={"vendor": "openai"}
    )
    next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
    first_at = time.monotonic() - started
    list(stream)
    assert first_at < 0.6 < time.monotonic() - started


def test_usage_chunk_arrives_only_when_the_client_asked(openai_client, fake):
    asked = list(
        openai_client.chat.completions.create(
            model="m",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            extra_query={"vendor": "openai"},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.total_tokens > 0
    not_asked = list(
        openai_client.chat.completions.create(model="m", messages=HELLO, stream=True, extra_query={"vendor": "openai"})
    )
    assert all(chunk.usage is None for chunk in not_asked)


def test_without_credentials_file_router_starts_and_answers_503(start_router, fake):
    server = start_router(credentials="absent")
    assert "vendors without credentials: openai, gemini" in server.logs()
    response = requests.post(server.url("/v1/chat/completions"), json={"messages": HELLO}, timeout=5)
    assert response.status_code == 503
    error = response.json()["error"]
    assert "No credentials configured" in error["message"]
    assert error["code"] == "no_credentials"
    assert requests.get(server.url("/health"), timeout=5).text == "OK"


def test_vendor_connections_are_reused_after_whole_answers_and_streams(start_router, fake):
    """A stream read to its end, [DONE] included, leaves its connection to the next call:
    against a real vendor that saves a TCP and TLS handshake per call."""
    server = start_router(models=[{"vendor": "openai", "model": "gpt-4o"}])
    client = sdk(server)
    for _ in range(3):
        client.chat.completions.create(model="m", messages=HELLO)
        assert stream_text_of(client) == "Hello from openai! You said: Hello"
    assert len({r["connection"] for r in fake.requests()}) == 1


def stream_text_of(client) -> str:
    chunks = client.chat.completions.create(model="m", messages=HELLO, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
