"""Hostile input against the real gunicorn worker: oversized and chunked bodies, the costliest
bodies that fit in MAX_BODY_BYTES, and fuzzing; the worker answers each cleanly and survives.

The worker's CPU time per request is read from /proc, so "cheap" is measured, not assumed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzz import CONTENT_TYPES, FIELD_PATHS, JSON_VALUES, replaced
from tests.support.processes import FakeVendorProcess, RouterProcess, router_config

KEY = "rk-hostile-client-0123456789"
LIMIT = 10 * 1024 * 1024  # the default MAX_BODY_BYTES
CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}
# Generous: the worst body measured about 0.5 s of worker CPU on a 2-CPU CI machine; the point
# is that no body costs what an unchecked one did (4 s of CPU for 10 MiB of tiny messages).
MAX_CPU_SECONDS = 2.0


@pytest.fixture(scope="module")
def router(fake_vendor: FakeVendorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """One worker, so its pid and CPU time are the ones answering."""
    directory = tmp_path_factory.mktemp("hostile")
    env = {**router_config(directory, fake_vendor), "ROUTER_API_KEYS": KEY}
    server = RouterProcess(env, directory / "router.log", workers=1)
    yield server
    server.stop()


def worker_pid(router: RouterProcess) -> int:
    [pid] = Path(f"/proc/{router.process.pid}/task/{router.process.pid}/children").read_text().split()
    return int(pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (Linux /proc, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(router: RouterProcess, data, headers: dict[str, str] | None = None) -> requests.Response:
    headers = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    return requests.post(router.url(CHAT), data=data, headers=headers, timeout=60)


def assert_openai_error(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_chunked_body_over_the_limit_is_413_json(router, fake):
    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"model": "any-model", "messages": [{"role": "user", "content": "'
        for _ in range(total // 65536):
            yield b"x" * 65536
        yield b'"}]}'

    # A generator body makes requests send Transfer-Encoding: chunked, without Content-Length.
    assert_openai_error(post(router, chunks(LIMIT + 65536)), 413)
    # Exactly at the limit a chunked body cannot be told from a longer one cut there: refused too.
    padded = json.dumps(HELLO).encode().ljust(LIMIT)
    assert_openai_error(post(router, iter([padded])), 413)
    # Below it, a chunked body is read whole and answered.
    assert post(router, chunks(1_000_000)).status_code == 200
    assert fake.requests()[-1]["body"]["messages"][0]["content"] == "x" * (1_000_000 // 65536 * 65536)


def test_body_with_a_length_over_the_limit_is_413_json(router):
    assert_openai_error(post(router, b" " * (LIMIT + 1)), 413)


def _fill(unit: bytes, prefix: bytes, suffix: bytes) -> bytes:
    """``prefix``, then as many comma-separated ``unit`` as fit in LIMIT, then ``suffix``."""
    count = (LIMIT - len(prefix) - len(suffix)) // (len(unit) + 1)
    return prefix + b",".join([unit] * count) + suffix


def _spread(message: bytes, count: int) -> bytes:
    return b'{"messages":[' + b",".join([message] * count) + b"]}"


USER = b'{"role":"user","content":"hi"}'
TOOL_CALL = b'{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}'
PART = b'{"type":"text","text":"a"}'
TOOL = b'{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}'

# The costliest bodies within 10 MiB found for each part of the request, and what they must get.
WORST_BODIES = {
    "10 MiB of tiny messages (360k)": (_fill(b'{"role":"user","content":""}', b'{"messages":[', b"]}"), 400),
    "150k tool calls over 4096 messages": (
        _spread(b'{"role":"assistant","content":null,"tool_calls":[' + b",".join([TOOL_CALL] * 35) + b"]}", 4096),
        400,
    ),
    "4096 tool calls, the most allowed": (
        _spread(b'{"role":"assistant","content":null,"tool_calls":[' + TOOL_CALL + b"," + TOOL_CALL + b"]}", 2048)[:-2]
        + b","
        + USER
        + b"]}",
        200,
    ),
    "every count at its maximum at once": (
        b'{"messages":['
        + b",".join(
            [b'{"role":"assistant","content":null,"tool_calls":[' + TOOL_CALL + b"," + TOOL_CALL + b"]}"] * 2048
            + [b'{"role":"user","content":[' + b",".join([PART] * 170) + b"]}"] * 2048
        )
        + b'],"tools":['
        + b",".join([TOOL] * 512)
        + b"]}",
        200,
    ),
    "140k tools": (_fill(TOOL, b'{"messages":[' + USER + b'],"tools":[', b"]}"), 400),
    "400k content parts over 4096 messages": (
        _spread(b'{"role":"user","content":[' + b",".join([PART] * 90) + b"]}", 4096),
        200,
    ),
    "5M-item array in a pass-through field": (_fill(b"0", b'{"messages":[' + USER + b'],"x":[', b"]}"), 200),
    "one 10 MiB string": (b'{"messages":[{"role":"user","content":"' + b"a" * (LIMIT - 64) + b'"}]}', 200),
    "nested 1024 deep": (b'{"messages":[' + USER + b'],"x":' + b"[" * 1022 + b"]" * 1022 + b"}", 400),
    "10 MiB of [": (b"[" * LIMIT, 400),
    "10 MiB of whitespace": (b" " * LIMIT, 400),
    "10 MiB of invalid UTF-8": (b'{"messages":"' + b"\xff" * (LIMIT - 20) + b'"}', 400),
}


def test_worst_bodies_within_the_limit_cost_the_worker_little_cpu(router, fake, capsys):
    pid = worker_pid(router)
    measured = []
    for name, (body, status) in WORST_BODIES.items():
        assert len(body) <= LIMIT, name
        before = cpu_seconds(pid)
        response = post(router, body)
        spent = cpu_seconds(pid) - before
        measured.append((name, len(body), response.status_code, spent))
        assert response.status_code == status, f"{name}: {response.text[:300]}"
        assert spent < MAX_CPU_SECONDS, f"{name}: {spent:.2f} s of worker CPU"
    assert worker_pid(router) == pid
    with capsys.disabled():
        print("\nworker CPU per request (body, size, status, CPU s):")
        for name, size, status, spent in measured:
            print(f"  {name:40} {size / 2**20:5.1f} MiB  {status}  {spent:.2f} s")


FUZZ_REAL = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ_REAL
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda path, value: json.dumps(replaced(path, value)).encode(), st.sampled_from(FIELD_PATHS), JSON_VALUES
        ),
    ),
    content_type=CONTENT_TYPES,
)
def test_fuzzed_requests_get_2xx_or_openai_4xx_from_the_real_server(router, body, content_type):
    response = post(router, body, headers={"Content-Type": content_type})
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_worker_survived_everything_above(router):
    # Runs last in this module: the same worker process is still the one answering.
    pid = worker_pid(router)
    assert requests.get(router.url("/health"), timeout=5).status_code == 200
    assert worker_pid(router) == pid
    logs = router.logs()
    assert "Booting worker" in logs and logs.count("Booting worker") == 1, "a worker was restarted"
    assert "WORKER TIMEOUT" not in logs and "Traceback" not in logs
