"""Requests gunicorn refuses before the app sees them get OpenAI JSON errors, over a raw socket.

Each malformed request goes to the real gunicorn + gevent router on its own connection; the
answer must be JSON with the right status and ``Connection: close`` (never gunicorn's HTML page),
and the one worker must go on serving.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests

from tests.support.processes import FakeVendorProcess, RouterProcess, router_config
from tests.support.prometheus import children

HOST = b"Host: router\r\n"
MANY_HEADERS = b"".join(b"X-Header-%d: v\r\n" % n for n in range(200))

# name: (raw request, status, error code). Every request is under 8 KiB, so gunicorn reads all of
# it before answering and closing: unread bytes would make the kernel reset the connection.
MALFORMED = {
    "request line is not HTTP": (b"GARBAGE\r\n\r\n", 400, "invalid_request_line"),
    "method has a control character": (b"G\x00T /health HTTP/1.1\r\n" + HOST + b"\r\n", 400, "invalid_method"),
    "unknown HTTP version": (b"GET /health HTTP/9.9\r\n" + HOST + b"\r\n", 400, "invalid_http_version"),
    "header name with a space": (b"GET /health HTTP/1.1\r\n" + HOST + b"Bad Header: y\r\n\r\n", 400, "invalid_header"),
    "obsolete header folding": (b"GET /health HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", 400, "invalid_header"),
    "two content lengths": (
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "invalid_header",
    ),
    "request line too long": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414, "request_line_too_long"),
    "too many headers": (b"GET /health HTTP/1.1\r\n" + HOST + MANY_HEADERS + b"\r\n", 431, "request_headers_too_large"),
    "unsupported transfer coding": (
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: foo, chunked\r\n\r\n",
        501,
        "unsupported_transfer_coding",
    ),
    "chunked body with a bad chunk size": (
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
        "invalid_body",
    ),
    "expectation that cannot be met": (
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{}",
        417,
        "expectation_failed",
    ),
}


@pytest.fixture(scope="module")
def one_worker(fake_vendor: FakeVendorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """A router with a single worker, so "still serving" is about the worker that refused."""
    directory = tmp_path_factory.mktemp("malformed")
    server = RouterProcess(router_config(directory, fake_vendor), directory / "router.log", workers=1)
    yield server
    server.stop()


def send_raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as is on a new connection; return every byte until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_an_openai_json_error_and_the_worker_keeps_serving(one_worker, case):
    request, expected_status, expected_code = MALFORMED[case]
    worker = children(one_worker.process.pid)

    status, headers, body = parse(send_raw(one_worker.port, request))

    assert status == expected_status
    assert headers["content-type"] == "application/json"
    # gunicorn answers the ones it finds itself with "Connection: close"; a broken body is found by
    # the app, whose hop-by-hop headers gunicorn drops, but it closes that connection all the same
    # (send_raw reads until the server closes).
    if expected_code != "invalid_body":
        assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == expected_code
    assert error["param"] is None
    assert isinstance(error["message"], str) and error["message"]
    assert b"<html" not in body.lower()

    assert requests.get(one_worker.url("/health"), headers={"Connection": "close"}, timeout=10).status_code == 200
    assert children(one_worker.process.pid) == worker  # the same worker answered: it did not die
