"""Logs of the real gunicorn: JSON lines that all parse, and one request id on every line of a request."""

from __future__ import annotations

import json
import re
import time
import uuid

import requests

from tests.support.processes import wait_until

CHAT = "/v1/chat/completions"
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}
ACCESS_FIELDS = {"method", "path", "status", "vendor", "model", "attempts", "duration_ms", "ttfb_ms"}
ANSWERED_FIELDS = {"credential", "share", "vendor_ms"}


def post(url: str, request_id: str, **kwargs) -> requests.Response:
    """A chat call with an X-Request-ID, its connection closed after the answer.

    Closed, not left idle: an idle keep-alive connection holds a gevent worker's graceful
    shutdown for all of GRACEFUL_TIMEOUT, and these tests stop routers.
    """
    headers = {"X-Request-ID": request_id, "Connection": "close"}
    return requests.post(url, headers=headers, timeout=30, **{"json": HELLO, **kwargs})


def json_lines(text: str) -> list[dict]:
    """Every line of a log, parsed; fails on the first line that is not a JSON object."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = json.loads(line)  # a line that does not parse fails the test here
        assert isinstance(entry, dict), f"line {number} is not an object: {line}"
        assert {"time", "level", "logger", "request_id", "message"} <= set(entry), line
        lines.append(entry)
    return lines


def access_line(lines: list[dict], request_id: str) -> dict:
    [line] = [e for e in lines if e["logger"] == "router.access" and e["request_id"] == request_id]
    return line


def test_json_format_makes_every_line_an_object_and_access_lines_carry_the_fields(start_router, fake):
    router = start_router(workers=2, LOG_FORMAT="json")
    fake.behave("openai", chunks=5, interval=0.2)
    fake.behave("gemini", chunks=5, interval=0.2)

    whole = post(router.url(CHAT), "whole-1")
    started = time.monotonic()
    stream = post(router.url(CHAT), "stream-1", json={**HELLO, "stream": True})
    stream_seconds = time.monotonic() - started
    missing = requests.get(router.url("/no/such/route"), headers={"Connection": "close"}, timeout=10)
    generated = missing.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # gunicorn's own shutdown lines are in the file too.
    assert router.stop() == 0

    lines = json_lines(router.log_path.read_text())
    assert {e["logger"] for e in lines} >= {"gunicorn.error", "router.access"}

    line = access_line(lines, "whole-1")
    assert set(line) >= ACCESS_FIELDS | ANSWERED_FIELDS
    assert (line["method"], line["path"], line["status"], line["attempts"]) == ("POST", CHAT, 200, 1)
    assert (line["vendor"], line["model"]) == (whole.headers["X-Vendor-Source"], whole.headers["X-Model-Source"])
    assert 0 < line["ttfb_ms"] <= line["duration_ms"]
    # The attempt that answered: its credential, its share of the traffic (two combinations), its vendor time.
    assert line["credential"] in {"openai#1", "gemini#1"} and line["share"] == 50.0
    assert 0 < line["vendor_ms"] <= line["ttfb_ms"]

    line = access_line(lines, "stream-1")
    assert line["vendor"] == stream.headers["X-Vendor-Source"] and line["status"] == 200
    # A stream's line is written when it ends: its duration is the whole stream's (about 1 s).
    assert 700 <= line["duration_ms"] <= stream_seconds * 1000 + 200
    assert line["ttfb_ms"] < line["duration_ms"] - 500

    line = access_line(lines, generated)
    assert (line["method"], line["path"], line["status"], line["vendor"]) == ("GET", "/no/such/route", 404, None)
    assert not set(line) & ANSWERED_FIELDS


def test_a_request_id_given_is_returned_and_on_every_line_of_that_request(start_router, fake):
    router = start_router(workers=1, LOG_FORMAT="json")
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("whole", "failed", "broken_stream")}

    answer = post(router.url(CHAT), ids["whole"])
    assert answer.headers["X-Request-ID"] == ids["whole"]

    fake.behave("openai", status=500)
    failed = post(router.url(CHAT), ids["failed"], params={"vendor": "openai"})
    assert failed.status_code == 500 and failed.headers["X-Request-ID"] == ids["failed"]

    fake.behave("gemini", chunks=6, interval=0.1, drop_after=2)
    with post(
        router.url(CHAT), ids["broken_stream"], params={"vendor": "gemini"}, json={**HELLO, "stream": True}, stream=True
    ) as stream:
        # Set before the first byte of the body: a stream cannot add headers later.
        assert stream.headers["X-Request-ID"] == ids["broken_stream"]
        stream.content  # noqa: B018 -- read to the end

    # The stream's access line is written when the server closes the response, just after the end.
    stream_access = f'"logger":"router.access","request_id":"{ids["broken_stream"]}"'
    wait_until(lambda: stream_access in router.logs(), 10, message="the stream's access line")
    lines = json_lines(router.logs())

    def messages(request_id: str) -> list[str]:
        return [f"{e['logger']}: {e['message']}" for e in lines if e["request_id"] == request_id]

    # A request its first attempt answered has one line: the access line names the attempt.
    [whole] = messages(ids["whole"])
    assert whole.startswith("router.access: method=POST") and "status=200" in whole
    assert "credential=" in whole and "vendor_ms=" in whole

    failed_lines = messages(ids["failed"])
    assert len(failed_lines) == 2
    assert failed_lines[0].startswith("app.forward: Even distribution selected combination")
    assert "vendor_error HTTP 500" in failed_lines[0] and "status=500" in failed_lines[1]

    broken = messages(ids["broken_stream"])
    assert len(broken) == 2
    assert broken[0].startswith("app.forward: stream ended with an error event")
    assert broken[1].startswith("router.access:") and "status=200" in broken[1] and "credential=gemini#1" in broken[1]

    # Nothing logged while serving a request lost its id: the only id-less lines are start-up ones.
    for entry in lines:
        if entry["logger"].startswith(("app.forward", "app.relay", "app.upstream", "router.access")):
            assert entry["request_id"] != "-", entry


def test_text_format_puts_the_request_id_on_every_line_of_the_request(router, fake):
    request_id = f"text-{uuid.uuid4().hex[:12]}"
    answer = post(router.url(CHAT), request_id)
    assert answer.headers["X-Request-ID"] == request_id
    wait_until(lambda: f"[{request_id}] router.access" in router.logs(), 10, message="the access line")
    [line] = [line for line in router.logs().splitlines() if request_id in line]
    assert re.match(rf"\S+ \S+ INFO \[{request_id}\] router\.access: ", line), line


def test_control_characters_from_outside_never_start_a_new_text_log_line(router, fake):
    request_id = f"forge-{uuid.uuid4().hex[:12]}"
    # What `curl 'localhost:8082/x%0Aforged'` sends: the router decodes the path to "/x\nforged".
    missing = requests.get(
        router.url("/x%0Aforged%0D%1B[2J%C2%85%E2%80%A8end"),
        headers={"X-Request-ID": request_id, "Connection": "close"},
        timeout=10,
    )
    assert missing.status_code == 404
    # A vendor's error text reaches the attempt line: it is outside text too.
    fake.behave("openai", status=400, error_message="bad model\nforged-vendor-line\r")
    failed = post(router.url(CHAT), request_id, params={"vendor": "openai"})
    assert failed.status_code == 400

    wait_until(lambda: router.logs().count(f"[{request_id}] router.access") == 2, 10, message="both access lines")
    lines = router.logs().splitlines()
    assert not [line for line in lines if line.startswith(("forged", "end", "\x1b"))]
    mine = [line for line in lines if f"[{request_id}]" in line]
    assert len(mine) == 3, mine
    assert r"path=/x\nforged\r\x1b[2J\x85\u2028end status=404" in mine[0]
    assert r"bad model\nforged-vendor-line\r" in mine[1]
    assert "path=/v1/chat/completions status=400" in mine[2]
