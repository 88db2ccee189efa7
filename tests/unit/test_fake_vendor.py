"""The fake vendor really does what its behaviour keys promise, seen from a real HTTP client.

The fake runs as a subprocess, exactly as the integration tests and the benchmark use it.
"""

from __future__ import annotations

import base64
import json
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest
import requests

from tests.support.certs import TestCertificates, make_certificates, openssl_available
from tests.support.processes import ROOT, FakeVendorProcess

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "user", "content": "What is the weather?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {
                "zone": {"enum": ["UTC", "CET"]},
                "days": {"type": "integer"},
            },
            "required": ["zone", "days"],
        },
    },
}


def start_fake(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_vendor", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=15)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("FAKE_VENDOR_LISTENING "):
        proc.kill()
        raise RuntimeError(f"fake vendor did not start: {line!r}")
    return proc, int(line.split()[1])


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    proc, port = start_fake()
    yield port
    proc.terminate()
    proc.wait(timeout=5)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(autouse=True)
def reset(port: int, http: requests.Session) -> None:
    http.post(f"http://127.0.0.1:{port}/_control/reset").raise_for_status()


def chat(http: requests.Session, port: int, vendor: str = "openai", **body: Any) -> requests.Response:
    path = "/gemini/v1beta/openai" if vendor == "gemini" else f"/{vendor}"
    payload = {"model": "m-1", "messages": MESSAGES, **body}
    answer = http.post(
        f"http://127.0.0.1:{port}{path}/chat/completions",
        json=payload,
        stream=bool(body.get("stream")),
        timeout=10,
    )
    # Like OpenAI's, the fake's text/event-stream names no charset; SSE is always UTF-8.
    answer.encoding = "utf-8"
    return answer


def data_lines(text: str, le: str = "\n") -> list[str]:
    """The payloads of the SSE events in ``text`` (every event is ``data: x<le><le>``)."""
    events = text.split(le + le)
    assert events[-1] == "", f"stream does not end with a blank line: {text[-50:]!r}"
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e[len("data: ") :] for e in events[:-1]]


def chunks_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(d) for d in data_lines(text) if d != "[DONE]"]


def control(http: requests.Session, port: int, what: str, **params: str) -> Any:
    answer = http.get(f"http://127.0.0.1:{port}/_control/{what}", params=params, timeout=5)
    answer.raise_for_status()
    return answer.json()


def raw_request(port: int, body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST /openai/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


def read_response(f: BinaryIO) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    """(status, headers, body, HTTP chunks) read from a raw socket file."""
    status = int(f.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    pieces: list[bytes] = []
    if "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int(f.readline().strip(), 16):
            pieces.append(f.read(size))
            assert f.read(2) == b"\r\n"
        assert f.readline() == b"\r\n"
        body = b"".join(pieces)
    else:
        body = f.read()  # close-delimited
    return status, headers, body, pieces


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as f:
            return read_response(f)


def wait_for(predicate: Any, timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


# --------------------------------------------------------------------------------------------


def test_health_answers_ok(port: int, http: requests.Session) -> None:
    answer = http.get(f"http://127.0.0.1:{port}/health")
    assert (answer.status_code, answer.text) == (200, "OK")


def test_whole_answer_has_openai_shape(port: int, http: requests.Session) -> None:
    answer = chat(http, port, messages=[{"role": "user", "content": "x" * 300}])
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "m-1"
    assert body["system_fingerprint"] == "fp_fake"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello from openai! You said: " + "x" * 200,
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert chat(http, port).json()["id"] != body["id"]


def test_stream_has_role_content_finish_and_done(port: int, http: requests.Session) -> None:
    answer = chat(http, port, stream=True)
    assert answer.headers["Content-Type"] == "text/event-stream"
    assert answer.headers["Transfer-Encoding"] == "chunked"
    payloads = data_lines(answer.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m-1" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert len(deltas) == 1 + 5 + 1  # role, 5 content pieces, finish
    assert "".join(d["content"] for d in deltas[1:-1]) == "Hello from openai! You said: What is the weather?"
    assert deltas[-1] == {}
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]
    assert "usage" not in chunks[-1]


def test_stream_usage_chunk_only_with_include_usage(port: int, http: requests.Session) -> None:
    with_usage = chunks_of(chat(http, port, stream=True, stream_options={"include_usage": True}).text)
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in with_usage[:-1])
    without = chunks_of(chat(http, port, stream=True).text)
    assert all("usage" not in c and c["choices"] for c in without)
    off = chunks_of(
        chat(
            http,
            port,
            stream=True,
            stream_options={"include_usage": True},
            x_fake={"usage": False},
        ).text
    )
    assert all(c["choices"] for c in off)
    assert "usage" not in chat(http, port, x_fake={"usage": False}).json()


def cached_call(http: requests.Session, port: int, key: str, messages: list[dict[str, Any]], **body: Any) -> dict:
    """The usage of a call under credential ``key`` to a fake emulating a prompt cache of 16-token blocks."""
    payload = {"model": "m-1", "messages": messages, "x_fake": {"prefix_cache": 16}, **body}
    answer = http.post(
        f"http://127.0.0.1:{port}/openai/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    if body.get("stream"):
        return chunks_of(answer.text)[-1]["usage"]
    return answer.json()["usage"]


def test_prefix_cache_reports_the_longest_prefix_seen_on_this_key_in_whole_blocks(
    port: int, http: requests.Session
) -> None:
    system = {"role": "system", "content": "s" * 600}
    turn1 = [system, {"role": "user", "content": "first question"}]
    first = cached_call(http, port, "key-a", turn1)
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    turn2 = [*turn1, {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "u" * 300}]
    second = cached_call(http, port, "key-a", turn2)
    cached = second["prompt_tokens_details"]["cached_tokens"]
    # The first turn's whole blocks (its ~620 characters: 9 blocks of 64) are now read from the cache.
    assert cached == 9 * 16
    assert cached % 16 == 0 and cached < second["prompt_tokens"]
    # Another key has its own cache; the same key sees the longer prefix next time, streamed too.
    assert cached_call(http, port, "key-b", turn2)["prompt_tokens_details"]["cached_tokens"] == 0
    streamed = cached_call(http, port, "key-a", turn2, stream=True, stream_options={"include_usage": True})
    assert streamed["prompt_tokens_details"]["cached_tokens"] > cached
    # A different start shares nothing; without prefix_cache the usage has no details at all.
    other = [{"role": "system", "content": "t" * 600}, *turn2[1:]]
    assert cached_call(http, port, "key-a", other)["prompt_tokens_details"]["cached_tokens"] == 0
    assert "prompt_tokens_details" not in chat(http, port).json()["usage"]


def test_gemini_quirks_refuse_prompt_cache_key_as_an_unknown_name(port: int, http: requests.Session) -> None:
    refused = chat(http, port, vendor="gemini", prompt_cache_key="session-1")
    assert refused.status_code == 400
    assert 'Unknown name "prompt_cache_key"' in refused.json()[0]["error"]["message"]
    assert chat(http, port, prompt_cache_key="session-1").status_code == 200


def test_interval_paces_events(port: int, http: requests.Session) -> None:
    start = time.monotonic()
    answer = chat(http, port, stream=True, x_fake={"interval": 0.15, "chunks": 2})
    arrivals = []
    for piece in answer.iter_content(chunk_size=None):
        arrivals += [time.monotonic() - start] * piece.count(b"data: ")
    assert len(arrivals) == 5  # role, 2 content, finish, [DONE]: 4 intervals
    assert arrivals[0] < 0.3
    assert arrivals[-1] - arrivals[0] >= 0.55


def test_content_chunks_are_sent_verbatim(port: int, http: requests.Session) -> None:
    pieces = ["data: [DONE]\n\n", "h\u00e9llo ", "\U0001f30d", "\r\nend"]
    answer = chat(http, port, stream=True, x_fake={"content_chunks": pieces})
    deltas = [c["choices"][0]["delta"] for c in chunks_of(answer.text)]
    assert [d["content"] for d in deltas[1:-1]] == pieces
    whole = chat(http, port, x_fake={"content_chunks": pieces}).json()
    assert whole["choices"][0]["message"]["content"] == "".join(pieces)


def test_openai_tool_call_streams_header_then_argument_fragments(port: int, http: requests.Session) -> None:
    answer = chat(
        http,
        port,
        stream=True,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        x_fake={"parallel": 2},
    )
    chunks = chunks_of(answer.text)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    headers = [c for c in calls if "id" in c]
    assert [(h["index"], h["function"]) for h in headers] == [
        (0, {"name": "get_time", "arguments": ""}),
        (1, {"name": "get_time", "arguments": ""}),
    ]
    assert all(h["id"].startswith("call_") and h["type"] == "function" for h in headers)
    for index in (0, 1):
        fragments = [c["function"]["arguments"] for c in calls if c["index"] == index]
        assert len(fragments) > 2
        assert json.loads("".join(fragments)) == {"zone": "UTC", "days": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_whole_tool_call_uses_first_tool_and_required_args(port: int, http: requests.Session) -> None:
    body = chat(http, port, tools=[WEATHER_TOOL, TIME_TOOL]).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["function"] == {
        "name": "get_weather",
        "arguments": '{"location":"example"}',
    }
    none = chat(http, port, tools=[WEATHER_TOOL], tool_choice="none").json()
    assert none["choices"][0]["message"]["content"].startswith("Hello from openai!")


def test_gemini_quirks_in_whole_tool_call_answer(port: int, http: requests.Session) -> None:
    body = chat(http, port, "gemini", tools=[WEATHER_TOOL]).json()
    assert "system_fingerprint" not in body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["tool_calls"][0]["id"] == ""
    records = control(http, port, "requests", vendor="gemini")
    assert records[0]["path"] == "/gemini/v1beta/openai/chat/completions"


def test_gemini_quirks_in_streamed_tool_call(port: int, http: requests.Session) -> None:
    chunks = chunks_of(chat(http, port, "gemini", stream=True, tools=[WEATHER_TOOL]).text)
    assert len({c["id"] for c in chunks}) == len(chunks)  # a new id on every chunk
    assert all("system_fingerprint" not in c for c in chunks)
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:-1]]
    assert calls == [
        [
            {
                "index": 0,
                "id": "",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"location":"example"}',
                },
            }
        ]
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def assembled(answer: requests.Response, stream: bool) -> tuple[str | None, list[tuple[str, Any]], str]:
    """(text, [(tool name, parsed arguments)], finish_reason) of a whole or streamed answer."""
    if not stream:
        choice = answer.json()["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        parsed = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
        return choice["message"]["content"], parsed, choice["finish_reason"]
    chunks = chunks_of(answer.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) or None
    names: list[str] = []
    arguments: list[str] = []
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            if "name" in call["function"]:  # a new call (Gemini's arrive whole, without index)
                names.append(call["function"]["name"])
                arguments.append("")
            arguments[-1] += call["function"]["arguments"]
    parsed = [(name, json.loads(args)) for name, args in zip(names, arguments, strict=True)]
    return text, parsed, chunks[-1]["choices"][0]["finish_reason"]


def directive(text: str) -> list[dict[str, Any]]:
    """A conversation whose last user message (content parts, as agents send) carries ``text``."""
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "<reminder>"}, {"type": "text", "text": text}]},
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("vendor", ["openai", "gemini"])
def test_directive_calls_the_named_tool_with_its_arguments(
    port: int, http: requests.Session, vendor: str, stream: bool
) -> None:
    messages = directive('Please [[fake:tool_call get_time {"zone": "CET", "days": 3, "note": "a ]] b"}]] now')
    # The directive wins over tool_calls false, content and parallel, whichever tool is first.
    x_fake = {"tool_calls": False, "content": "ignored", "parallel": 3}
    answer = chat(http, port, vendor, messages=messages, tools=[WEATHER_TOOL, TIME_TOOL], stream=stream, x_fake=x_fake)
    text, calls, finish = assembled(answer, stream)
    assert calls == [("get_time", {"zone": "CET", "days": 3, "note": "a ]] b"})]
    assert text is None
    assert finish == ("stop" if vendor == "gemini" else "tool_calls")  # Gemini says "stop" even so
    if not stream:
        [call] = answer.json()["choices"][0]["message"]["tool_calls"]
        assert call["id"] == "" if vendor == "gemini" else call["id"].startswith("call_")


def test_directives_are_read_from_the_current_turns_last_user_message_only(port: int, http: requests.Session) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    two = directive("[[fake:tool_call get_weather {}]] and [[fake:tool_call  get_time]]")
    # A system message after the user's (as Claude Code sends its environment) changes nothing.
    two.append({"role": "system", "content": "# Environment"})
    assert assembled(chat(http, port, messages=two, tools=tools), False)[1] == [("get_weather", {}), ("get_time", {})]
    answered = [*directive("[[fake:tool_call get_weather {}]]"), {"role": "assistant", "content": "Done."}]
    later = [*answered, {"role": "user", "content": "Thanks"}]
    for messages in (answered, later):
        text, calls, _ = assembled(
            chat(http, port, messages=messages, tools=tools, x_fake={"tool_calls": False}), False
        )
        assert (calls, text.startswith("Hello from openai!")) == ([], True)
    # Without a directive the automatic tool call is as before.
    assert assembled(chat(http, port, tools=tools), False)[1] == [("get_weather", {"location": "example"})]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[fake:tool_call get_wether {}]]", "not among the request's tools ['get_weather', 'get_time']"),
        ("[[fake:tool_call get_weather {not json}]]", "bad directive"),
        ('[[fake:tool_call get_weather ["a list"]]]', "bad directive"),
        ('[[fake:tool_call get_weather {"a": 1} trailing]]', "bad directive"),
        ("[[fake:tool_call]]", "no directive could be read"),
    ],
)
def test_a_directive_that_cannot_be_followed_answers_a_text_saying_why(
    port: int, http: requests.Session, text: str, says: str
) -> None:
    answer = chat(http, port, messages=directive(text), tools=[WEATHER_TOOL, TIME_TOOL])
    content, calls, finish = assembled(answer, False)
    assert (calls, finish) == ([], "stop")
    assert content.startswith("fake: ") and says in content


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("vendor", ["openai", "gemini"])
def test_tool_results_are_echoed_instead_of_another_tool_call(
    port: int, http: requests.Session, vendor: str, stream: bool
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        *directive("[[fake:tool_call get_weather {}]]"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22C and sunny"},
    ]
    answer = chat(http, port, vendor, messages=messages, tools=[WEATHER_TOOL], stream=stream)
    assert assembled(answer, stream) == ("tool result: 22C and sunny", [], "stop")
    # Two results (content parts too), then a user message in the same turn: one line each.
    parts = {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]}
    more = [*messages, parts, {"role": "user", "content": "<reminder>"}]
    answer = chat(http, port, vendor, messages=more, tools=[WEATHER_TOOL], stream=stream)
    assert assembled(answer, stream)[0] == "tool result: 22C and sunny\ntool result: rain"


def test_explicit_content_or_tool_calls_win_over_the_tool_result_echo(port: int, http: requests.Session) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
    ]
    told = chat(
        http, port, messages=messages, tools=[WEATHER_TOOL], x_fake={"tool_calls": False, "content": "It is 22C."}
    )
    assert assembled(told, False) == ("It is 22C.", [], "stop")
    again = chat(http, port, messages=messages, tools=[WEATHER_TOOL], x_fake={"tool_calls": True})
    assert assembled(again, False)[1] == [("get_weather", {"location": "example"})]


def test_gemini_error_body_is_a_json_array(port: int, http: requests.Session) -> None:
    answer = chat(http, port, "gemini", x_fake={"status": 400})
    assert answer.status_code == 400
    assert answer.json() == [
        {
            "error": {
                "code": 400,
                "message": "The fake gemini vendor answers 400 as told.",
                "status": "INVALID_ARGUMENT",
            }
        }
    ]
    forced = chat(http, port, "gemini", x_fake={"status": 400, "error_format": "openai"})
    assert "error" in forced.json()


def test_status_with_retry_after_answers_openai_error(port: int, http: requests.Session) -> None:
    answer = chat(http, port, x_fake={"status": 429, "retry_after": 7, "error_message": "slow"})
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "7"
    assert answer.json() == {
        "error": {
            "message": "slow",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert "Retry-After" not in chat(http, port, x_fake={"status": 503}).headers


@pytest.mark.parametrize(
    ("fmt", "content_type", "marker"),
    [("html", "text/html", "<html>"), ("text", "text/plain", "as told")],
)
def test_error_format_html_and_text(
    port: int, http: requests.Session, fmt: str, content_type: str, marker: str
) -> None:
    answer = chat(http, port, stream=True, x_fake={"status": 502, "error_format": fmt})
    assert answer.status_code == 502
    assert answer.headers["Content-Type"].startswith(content_type)
    assert marker in answer.text


def test_delay_holds_back_the_headers(port: int, http: requests.Session) -> None:
    start = time.monotonic()
    chat(http, port, x_fake={"delay": 0.3}).raise_for_status()
    assert time.monotonic() - start >= 0.3


def test_drop_after_breaks_the_stream(port: int, http: requests.Session) -> None:
    answer = chat(http, port, stream=True, x_fake={"drop_after": 2})
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for piece in answer.iter_content(chunk_size=None):
            received += piece
    assert received.count(b"data: ") == 3  # role + 2 content deltas, no finish, no [DONE]
    (stream,) = control(http, port, "streams")
    assert stream["outcome"] == "dropped"
    assert stream["events_sent"] == 3


def test_drop_after_sends_half_a_whole_answer(port: int, http: requests.Session) -> None:
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.post(
            f"http://127.0.0.1:{port}/openai/chat/completions",
            json={"messages": MESSAGES, "x_fake": {"drop_after": 0}},
            timeout=5,
        )


def test_drop_before_headers_closes_without_answering(port: int) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(
            f"http://127.0.0.1:{port}/openai/chat/completions",
            json={"messages": MESSAGES, "x_fake": {"drop_before_headers": True}},
            timeout=5,
        )


def test_stall_after_goes_silent_then_continues(port: int, http: requests.Session) -> None:
    answer = chat(http, port, stream=True, x_fake={"stall_after": 1, "stall": 0.5})
    pieces = answer.iter_content(chunk_size=None)
    received = b""
    while received.count(b"data: ") < 2:
        received += next(pieces)
    stalled_at = time.monotonic()
    assert control(http, port, "streams")[0]["outcome"] == "stalled"
    received += b"".join(pieces)
    assert time.monotonic() - stalled_at >= 0.4
    assert received.endswith(b"data: [DONE]\n\n")
    assert control(http, port, "streams")[0]["outcome"] == "completed"


def test_malformed_after_inserts_a_broken_json_line(port: int, http: requests.Session) -> None:
    answer = chat(http, port, stream=True, x_fake={"malformed_after": 2})
    payloads = data_lines(answer.text)
    assert payloads[3] == '{"this is not json'
    assert json.loads(payloads[2])["choices"][0]["delta"]["content"]
    assert payloads[-1] == "[DONE]"


def test_done_false_omits_the_done_line(port: int, http: requests.Session) -> None:
    payloads = data_lines(chat(http, port, stream=True, x_fake={"done": False}).text)
    assert "[DONE]" not in payloads
    assert json.loads(payloads[-1])["choices"][0]["finish_reason"] == "stop"


def test_close_framing_has_no_length_and_ends_at_close(port: int) -> None:
    request = raw_request(port, {"messages": MESSAGES, "stream": True, "x_fake": {"framing": "close"}})
    status, headers, body, _ = raw_exchange(port, request)
    assert status == 200
    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    assert headers["connection"] == "close"
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("le", ["\r\n", "\r"])
def test_line_ending_is_used_for_every_sse_line(port: int, le: str) -> None:
    request = raw_request(port, {"stream": True, "x_fake": {"line_ending": le}})
    text = raw_exchange(port, request)[2].decode()
    payloads = data_lines(text, le)
    assert payloads[-1] == "[DONE]"
    assert len(payloads) == 8
    if le == "\r":
        assert "\n" not in text


def test_split_delivers_the_same_bytes_in_small_pieces(port: int) -> None:
    behaviour = {
        "content_chunks": ["h\u00e9llo", " \U0001f30d", "[DONE]"],
        "line_ending": "\r\n",
    }
    body = {"messages": MESSAGES, "stream": True, "x_fake": behaviour}
    whole = raw_exchange(port, raw_request(port, body))
    body["x_fake"] = {**behaviour, "split": 7, "split_delay": 0}
    split = raw_exchange(port, raw_request(port, body))

    def normalized(data: bytes) -> bytes:
        return re.sub(rb'"(id|created)":("[^"]*"|\d+)', b"", data)

    assert max(len(p) for p in split[3]) == 7
    assert len(split[3]) > 5 * len(whole[3])
    assert normalized(split[2]) == normalized(whole[2])


def test_x_fake_applies_and_put_behaviour_wins(port: int, http: requests.Session) -> None:
    def content(vendor: str = "openai") -> str:
        answer = chat(http, port, vendor, x_fake={"content": "from body"})
        return answer.json()["choices"][0]["message"]["content"]

    assert content() == "from body"
    base = f"http://127.0.0.1:{port}/_control/vendors"
    http.put(f"{base}/openai", json={"content": "from PUT"}).raise_for_status()
    assert content() == "from PUT"
    assert content("gemini") == "from body"  # behaviours are per vendor
    http.delete(f"{base}/openai").raise_for_status()
    assert content() == "from body"
    # x_fake overrides the vendor's quirk preset
    plain = chat(http, port, "gemini", x_fake={"quirks": "openai"}).json()
    assert plain["system_fingerprint"] == "fp_fake"


def test_invalid_behaviours_are_refused(port: int, http: requests.Session) -> None:
    base = f"http://127.0.0.1:{port}/_control/vendors/openai"
    assert http.put(base, json={"bogus": 1}).status_code == 400
    assert http.put(base, json={"status": "500"}).status_code == 400
    assert http.put(base, json={"framing": "chunky"}).status_code == 400
    answer = chat(http, port, x_fake={"delay": True})
    assert answer.status_code == 400
    assert "x_fake" in answer.json()["error"]["message"]


def test_requests_are_recorded_with_headers_and_body(port: int, http: requests.Session) -> None:
    chat(http, port, "openai", stream=False)
    http.post(
        f"http://127.0.0.1:{port}/gemini/v1beta/openai/chat/completions",
        data=b"not json",
        headers={"Authorization": "Bearer k-1", "X-Custom": "yes"},
    )
    everything = control(http, port, "requests")
    assert [r["vendor"] for r in everything] == ["openai", "gemini"]
    (record,) = control(http, port, "requests", vendor="gemini")
    assert record["method"] == "POST"
    assert record["headers"]["authorization"] == "Bearer k-1"
    assert record["headers"]["x-custom"] == "yes"
    assert record["body"] is None
    assert record["raw"] == "not json"
    assert abs(record["received_at"] - time.time()) < 5
    assert everything[0]["body"]["messages"] == MESSAGES
    assert "raw" not in everything[0]


def test_body_that_is_not_json_answers_400(port: int, http: requests.Session) -> None:
    answer = http.post(f"http://127.0.0.1:{port}/openai/chat/completions", data=b"{")
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_reset_clears_behaviours_requests_and_streams(port: int, http: requests.Session) -> None:
    chat(http, port, stream=True)
    http.put(f"http://127.0.0.1:{port}/_control/vendors/openai", json={"status": 500})
    assert control(http, port, "requests") and control(http, port, "streams")
    http.post(f"http://127.0.0.1:{port}/_control/reset").raise_for_status()
    assert control(http, port, "requests") == control(http, port, "streams") == []
    assert control(http, port, "vendors") == {}
    assert chat(http, port).status_code == 200


@pytest.mark.parametrize(
    "behaviour",
    [{"interval": 30}, {"stall_after": 1, "stall": 30}],
    ids=["interval", "stall"],
)
def test_client_close_mid_stream_is_noticed_quickly(
    port: int, http: requests.Session, behaviour: dict[str, Any]
) -> None:
    request = raw_request(port, {"messages": MESSAGES, "stream": True, "x_fake": behaviour})
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    received = b""
    while b"data: " not in received:
        received += sock.recv(65536)
    time.sleep(0.05)  # let the fake settle into its wait
    closed_at = time.time()
    sock.close()
    stream = wait_for(lambda: next((s for s in control(http, port, "streams") if s["client_closed_at"]), None))
    assert stream["outcome"] == "client_closed"
    assert 0 <= stream["client_closed_at"] - closed_at < 0.5
    assert stream["ended_at"] >= stream["client_closed_at"]
    (record,) = control(http, port, "requests")
    assert record["client_closed_at"] == stream["client_closed_at"]


def test_keep_alive_serves_pipelined_requests_until_connection_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw_request(port, {"messages": MESSAGES}) * 2)
        f = sock.makefile("rb")
        for _ in range(2):
            status, headers, body, _ = read_response(f)
            assert status == 200 and "connection" not in headers
            assert json.loads(body)["object"] == "chat.completion"
        sock.sendall(raw_request(port, {"stream": True}, "Connection: close\r\n"))
        status, headers, body, _ = read_response(f)
        assert headers["connection"] == "close"
        assert body.endswith(b"data: [DONE]\n\n")
        assert f.read() == b""  # closed by the fake


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"POST /openai/chat/completions HTTP/1.1\r\nbad header\r\n\r\n",
        b"POST /openai/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /openai/chat/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ],
    ids=["request-line", "header", "chunked-body", "content-length"],
)
def test_unparseable_requests_get_400_and_a_close(port: int, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request_bytes)
        f = sock.makefile("rb")
        status, headers, _, _ = read_response(f)
        assert (status, headers["connection"]) == (400, "close")
        assert f.read() == b""


def test_unknown_route_answers_404(port: int, http: requests.Session) -> None:
    assert http.get(f"http://127.0.0.1:{port}/nope").status_code == 404
    answer = http.get(f"http://127.0.0.1:{port}/openai/chat/completions")
    assert answer.status_code == 405


def test_sigterm_exits_promptly_with_streams_open() -> None:
    proc, port = start_fake()
    try:
        body = {"messages": MESSAGES, "stream": True, "x_fake": {"stall_after": 0}}
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(raw_request(port, body))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=2)
        assert time.monotonic() - start < 1
        sock.close()
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------
# Faults a real vendor shows now and then


def test_error_in_200_answers_200_whose_body_is_the_error(port: int, http: requests.Session) -> None:
    error = {"message": "quota", "code": 429, "status": "RESOURCE_EXHAUSTED"}
    for stream in (False, True):
        answer = chat(http, port, stream=stream, x_fake={"error_in_200": error})
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"error": error}


def test_no_choices_answers_a_completion_without_choices(port: int, http: requests.Session) -> None:
    body = chat(http, port, x_fake={"no_choices": True}).json()
    assert body["object"] == "chat.completion"
    assert "choices" not in body
    assert body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("after", [0, 2])
def test_error_event_after_n_content_events_ends_the_stream(port: int, http: requests.Session, after: int) -> None:
    answer = chat(http, port, stream=True, x_fake={"error_event_after": after})
    payloads = data_lines(answer.text)  # a complete chunked body: the stream ended, not broke
    assert len(payloads) == 1 + after + 1  # role, N content deltas, the error; no finish, no [DONE]
    assert json.loads(payloads[-1]) == {
        "error": {
            "message": "The fake openai vendor failed mid-stream as told.",
            "type": "server_error",
            "param": None,
            "code": 500,
        }
    }
    assert all("choices" in json.loads(p) for p in payloads[:-1])
    (stream,) = control(http, port, "streams")
    assert (stream["outcome"], stream["events_sent"]) == ("error_event", after + 2)


def test_error_event_sends_the_given_error_object(port: int, http: requests.Session) -> None:
    error = {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}
    behaviour = {"error_event_after": 1, "error_event": error}
    payloads = data_lines(chat(http, port, "gemini", stream=True, x_fake=behaviour).text)
    assert json.loads(payloads[-1]) == {"error": error}


def test_error_with_first_shares_one_http_chunk_with_the_first_content(port: int) -> None:
    body = {"messages": MESSAGES, "stream": True, "x_fake": {"error_with_first": True}}
    _, _, _, pieces = raw_exchange(port, raw_request(port, body))
    assert len(pieces) == 2  # the role chunk; the first content event and the error together
    events = pieces[1].split(b"\n\n")
    assert events[-1] == b""
    first, error = (json.loads(e[len(b"data: ") :]) for e in events[:-1])
    assert first["choices"][0]["delta"]["content"]
    assert error["error"]["code"] == 500


@pytest.mark.parametrize(
    ("style", "indices"),
    [(None, [None, None, None]), ("absent", [None, None, None]), ("zero", [0, 0, 0]), ("sequential", [0, 1, 2])],
)
def test_gemini_parallel_tool_calls_arrive_whole_each_in_its_own_chunk(
    port: int, http: requests.Session, style: str | None, indices: list[int | None]
) -> None:
    behaviour = {"parallel": 3, "tool_call_index": style}
    answer = chat(http, port, "gemini", stream=True, tools=[WEATHER_TOOL, TIME_TOOL], x_fake=behaviour)
    chunks = chunks_of(answer.text)
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    assert all(len(d["tool_calls"]) == 1 for d in deltas)
    calls = [d["tool_calls"][0] for d in deltas]
    assert [c.get("index") for c in calls] == indices
    assert [c["id"] for c in calls] == ["", "", ""]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"location": "example"}),
        ("get_time", {"zone": "UTC", "days": 1}),
        ("get_weather", {"location": "example"}),
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def arrival_times(answer: requests.Response) -> list[tuple[float, bytes]]:
    """(seconds since the call, line) for every SSE line, as the bytes arrive."""
    start = time.monotonic()
    lines: list[tuple[float, bytes]] = []
    pending = b""
    for piece in answer.iter_content(chunk_size=None):
        pending += piece
        *complete, pending = pending.split(b"\n")
        lines += [(time.monotonic() - start, line) for line in complete if line]
    return lines


def test_content_delay_holds_back_the_first_content_after_the_role(port: int, http: requests.Session) -> None:
    answer = chat(http, port, stream=True, x_fake={"content_delay": 0.6, "chunks": 2})
    lines = arrival_times(answer)
    role, first = lines[0][0], lines[1][0]
    assert b'"role"' in lines[0][1] and b'"content":"Hello' in lines[1][1]
    assert first - role >= 0.55


def test_comment_every_pings_during_every_wait_without_counting_as_content(port: int, http: requests.Session) -> None:
    behaviour = {
        "first_delay": 0.35,
        "content_delay": 0.35,
        "interval": 0.05,
        "stall_after": 1,
        "stall": 0.35,
        "comment_every": 0.1,
        "drop_after": 2,  # counted in content events: comments must not bring it forward
        "chunks": 3,
    }
    answer = chat(http, port, stream=True, x_fake=behaviour)
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for piece in answer.iter_content(chunk_size=None):
            received += piece
    events = [e for e in received.split(b"\n\n") if e]
    kinds = ["ping" if e == b": ping" else "data" for e in events]
    # 3 pings in each 0.35 s wait (first_delay; content_delay; stall), none in a 0.05 s interval
    assert kinds == ["ping"] * 3 + ["data"] + ["ping"] * 3 + ["data"] + ["ping"] * 3 + ["data"]
    (stream,) = control(http, port, "streams")
    assert (stream["events_sent"], stream["comments_sent"], stream["outcome"]) == (3, 9, "dropped")


@pytest.mark.parametrize(
    ("behaviour", "tail"),
    [
        ({"final_blank_line": False}, b"\ndata: [DONE]\n"),
        ({"final_blank_line": False, "final_line_ending": False}, b"\ndata: [DONE]"),
        ({"final_blank_line": False, "line_ending": "\r\n"}, b"\r\ndata: [DONE]\r\n"),
        ({"final_blank_line": False, "done": False}, b'"finish_reason":"stop"}]}\n'),
        ({"final_blank_line": False, "framing": "close"}, b"\ndata: [DONE]\n"),
    ],
    ids=["done", "no-line-ending", "crlf", "no-done", "close-framing"],
)
def test_final_blank_line_false_ends_the_body_right_after_the_last_event(
    port: int, behaviour: dict[str, Any], tail: bytes
) -> None:
    body = raw_exchange(port, raw_request(port, {"messages": MESSAGES, "stream": True, "x_fake": behaviour}))[2]
    assert body.endswith(tail)
    assert not body.endswith(tail + tail[-1:])
    le = behaviour.get("line_ending", "\n").encode()
    assert body.count(le * 2) == (6 if behaviour.get("done") is False else 7)  # every other event


def test_status_302_redirects_and_a_followed_redirect_is_recorded(port: int, http: requests.Session) -> None:
    url = f"http://127.0.0.1:{port}/openai/chat/completions"
    payload = {"messages": MESSAGES, "x_fake": {"status": 302}}
    answer = http.post(url, json=payload, allow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/openai/redirected"
    followed = http.post(url, json=payload)  # requests follows a 302 with a GET
    assert followed.status_code == 404
    records = control(http, port, "requests")
    assert [(r["endpoint"], r["method"]) for r in records] == [
        ("chat", "POST"),
        ("chat", "POST"),
        ("redirected", "GET"),
    ]


def test_status_103_sends_an_interim_head_then_the_final_answer(port: int, http: requests.Session) -> None:
    request = raw_request(port, {"messages": MESSAGES, "x_fake": {"status": 103}})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as f:
            assert f.readline() == b"HTTP/1.1 103 Early Hints\r\n"
            interim = []
            while (line := f.readline()) != b"\r\n":
                interim.append(line.decode().lower())
            assert not any(h.startswith(("content-length", "transfer-encoding")) for h in interim)
            status, _, body, _ = read_response(f)
    assert status == 200
    assert json.loads(body)["object"] == "chat.completion"
    assert control(http, port, "requests")[0]["body"]["x_fake"] == {"status": 103}


# --------------------------------------------------------------------------------------------
# Embeddings


def embed(http: requests.Session, port: int, vendor: str = "openai", **body: Any) -> requests.Response:
    path = "/gemini/v1beta/openai" if vendor == "gemini" else f"/{vendor}/v1"
    return http.post(f"http://127.0.0.1:{port}{path}/embeddings", json={"model": "e-1", **body}, timeout=10)


@pytest.mark.parametrize(
    "value",
    ["hello", ["hello", "world"], [1, 2, 3], [[1, 2], [3]]],
    ids=["string", "strings", "tokens", "token-lists"],
)
def test_embeddings_answer_like_openai_for_every_input_shape(port: int, http: requests.Session, value: Any) -> None:
    answer = embed(http, port, input=value)
    assert answer.status_code == 200
    body = answer.json()
    count = 1 if isinstance(value, str) or isinstance(value[0], int) else len(value)
    assert body["object"] == "list" and body["model"] == "e-1"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(count)]
    for item in body["data"]:
        assert len(item["embedding"]) == 8
        assert abs(sum(v * v for v in item["embedding"]) - 1) < 1e-5
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0
    assert set(usage) == {"prompt_tokens", "total_tokens"}


def test_embeddings_are_deterministic_per_item_with_the_asked_dimensions(port: int, http: requests.Session) -> None:
    first = embed(http, port, input=["a", "b"], dimensions=5).json()["data"]
    again = embed(http, port, input="b", dimensions=5).json()["data"]
    assert again[0]["embedding"] == first[1]["embedding"]
    assert first[0]["embedding"] != first[1]["embedding"]
    assert len(first[0]["embedding"]) == 5


def test_embeddings_base64_is_little_endian_float32_of_the_same_vector(port: int, http: requests.Session) -> None:
    floats = embed(http, port, input="same").json()["data"][0]["embedding"]
    encoded = embed(http, port, input="same", encoding_format="base64").json()["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == floats


def test_embeddings_are_recorded_and_take_the_error_behaviours(port: int, http: requests.Session) -> None:
    http.put(
        f"http://127.0.0.1:{port}/_control/vendors/gemini",
        json={"status": 429, "retry_after": 3, "delay": 0.2},
    ).raise_for_status()
    start = time.monotonic()
    answer = embed(http, port, "gemini", input="x")
    assert time.monotonic() - start >= 0.2
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "3")
    assert answer.json()[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
    chat(http, port)
    records = control(http, port, "requests")
    assert [(r["vendor"], r["endpoint"]) for r in records] == [("gemini", "embeddings"), ("openai", "chat")]
    assert records[0]["path"] == "/gemini/v1beta/openai/embeddings"
    with pytest.raises(requests.exceptions.ConnectionError):
        embed(http, port, input="x", x_fake={"drop_before_headers": True})


@pytest.mark.parametrize(
    "body",
    [{}, {"input": []}, {"input": [1, "a"]}, {"input": "x", "dimensions": 0}, {"input": "x", "encoding_format": "hex"}],
    ids=["missing", "empty", "mixed", "dimensions", "encoding"],
)
def test_embeddings_refuse_bad_input_with_400(port: int, http: requests.Session, body: dict[str, Any]) -> None:
    answer = embed(http, port, **body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


# --------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    if not openssl_available():
        pytest.skip("the openssl command-line tool is not installed")
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_tls_fake_is_trusted_only_with_its_ca(certificates: TestCertificates) -> None:
    proc, tls_port = start_fake("--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key))
    try:
        url = f"https://localhost:{tls_port}/openai/chat/completions"
        answer = requests.post(url, json={"messages": MESSAGES}, verify=str(certificates.ca), timeout=10)
        assert answer.json()["choices"][0]["message"]["content"].startswith("Hello from openai!")
        stream = requests.post(
            url, json={"messages": MESSAGES, "stream": True}, verify=str(certificates.ca), timeout=10
        )
        assert stream.text.endswith("data: [DONE]\n\n")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(url, json={"messages": MESSAGES}, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_fake_vendor_process_with_tls_serves_https_on_localhost(certificates: TestCertificates) -> None:
    fake = FakeVendorProcess(tls=(certificates.cert, certificates.key), ca=certificates.ca)
    try:
        assert fake.url("openai") == f"https://localhost:{fake.port}/openai"
        fake.behave("openai", content="over TLS")
        answer = requests.post(
            fake.url("openai") + "/chat/completions",
            json={"messages": MESSAGES},
            verify=str(certificates.ca),
            timeout=10,
        )
        assert answer.json()["choices"][0]["message"]["content"] == "over TLS"
        assert [r["endpoint"] for r in fake.requests()] == ["chat"]
    finally:
        fake.stop()


def test_reasoning_comes_as_reasoning_content_whole_and_before_the_content_in_a_stream(
    port: int, http: requests.Session
) -> None:
    whole = chat(http, port, x_fake={"reasoning": "Think first."}).json()
    assert whole["choices"][0]["message"]["reasoning_content"] == "Think first."
    streamed = chat(http, port, stream=True, x_fake={"reasoning": "Think first.", "chunks": 2})
    deltas = [c["choices"][0]["delta"] for c in chunks_of(streamed.text) if c.get("choices")]
    reasoning = [i for i, d in enumerate(deltas) if "reasoning_content" in d]
    assert "".join(deltas[i]["reasoning_content"] for i in reasoning) == "Think first."
    assert max(reasoning) < next(i for i, d in enumerate(deltas) if d.get("content"))


def test_null_error_adds_error_null_to_whole_answers_and_every_chunk(port: int, http: requests.Session) -> None:
    assert chat(http, port, x_fake={"null_error": True}).json()["error"] is None
    streamed = chat(http, port, stream=True, x_fake={"null_error": True})
    chunks = chunks_of(streamed.text)
    assert chunks and all("error" in c and c["error"] is None for c in chunks)


def test_revoked_keys_answer_401_to_those_keys_only(port: int, http: requests.Session) -> None:
    base = f"http://127.0.0.1:{port}"
    http.put(f"{base}/_control/vendors/openai", json={"revoked_keys": ["sk-old"], "content": "still here"})

    def call(key: str | None, path: str = "/openai/v1/chat/completions", **body: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        payload = body or {"model": "m", "messages": MESSAGES}
        return http.post(base + path, json=payload, headers=headers)

    refused = call("sk-old")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert call("sk-old", stream=True, model="m", messages=MESSAGES).status_code == 401
    assert call("sk-old", "/openai/v1/embeddings", model="e", input="hi").status_code == 401
    # Another key, or none, gets the rest of the behaviour; so does another vendor.
    assert call("sk-new").json()["choices"][0]["message"]["content"] == "still here"
    assert call(None).status_code == 200
    assert call("sk-new", "/openai/v1/embeddings", model="e", input="hi").status_code == 200
    assert call("sk-old", "/gemini/v1beta/openai/chat/completions").status_code == 200
    # Gemini quirks answer it in Gemini's error format.
    http.put(f"{base}/_control/vendors/gemini", json={"revoked_keys": ["sk-old"]})
    gemini = call("sk-old", "/gemini/v1beta/openai/chat/completions")
    assert gemini.status_code == 401
    assert gemini.json()[0]["error"]["code"] == 401
    assert len(control(http, port, "requests")) == 8  # refused requests are recorded too


def test_revoked_keys_must_be_a_list_of_non_empty_strings(port: int, http: requests.Session) -> None:
    base = f"http://127.0.0.1:{port}/_control/vendors/openai"
    for bad in ("sk-old", [""], [1], {"k": 1}):
        assert http.put(base, json={"revoked_keys": bad}).status_code == 400
    assert http.put(base, json={"revoked_keys": None}).status_code == 200
