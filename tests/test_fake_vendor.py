"""The fake vendor really does what its behaviour keys promise, seen from a real HTTP client.

The fake runs as a subprocess, exactly as the integration tests and the benchmark use it.
"""

from __future__ import annotations

import json
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import requests

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
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


def start_fake() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_vendor", "--port", "0"],
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
