"""configs/nginx/router.conf in a real nginx in front of the real gunicorn: streams, headers, limits."""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from app.settings import ServerSettings, Settings
from tests.support.nginx import CONFIG, NGINX, Nginx
from tests.support.processes import ROOT, free_port, wait_until

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light; .ci/run does)"
)

CHAT = "/v1/chat/completions"
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[int], Nginx]]:
    """``start_nginx(upstream_port)``; stopped before the router, which it holds connections to."""
    started: list[Nginx] = []

    def start(upstream_port: int) -> Nginx:
        server = Nginx(tmp_path / f"nginx{len(started)}", upstream_port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def arrivals(response: requests.Response) -> list[tuple[float, bytes]]:
    """(time, line) for every SSE data line, timed when its bytes reached the client."""
    seen, buffer = [], b""
    for piece in response.iter_content(chunk_size=None):
        now = time.monotonic()
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        seen.extend((now, line) for line in lines if line.startswith(b"data: "))
    return seen


def test_a_stream_stays_incremental_through_nginx_with_its_headers(start_router, start_nginx, fake):
    router = start_router(workers=2)
    nginx = start_nginx(router.port)
    fake.behave("openai", chunks=6, interval=0.15)
    fake.behave("gemini", chunks=6, interval=0.15)

    with requests.post(
        nginx.url(CHAT),
        json={**HELLO, "stream": True},
        headers={"X-Request-ID": "through-nginx-1"},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Request-ID"] == "through-nginx-1"
        assert response.headers["X-Vendor-Source"] in ("openai", "gemini")
        assert response.headers["X-Model-Source"]
        seen = arrivals(response)

    assert seen[-1][1] == b"data: [DONE]"
    # Six content events 150 ms apart: they arrive spread over about 0.75 s, not in one burst.
    times = [at for at, _ in seen]
    assert times[-1] - times[0] >= 0.5
    assert sum(1 for a, b in itertools.pairwise(times) if b - a >= 0.08) >= 4
    wait_until(lambda: "[through-nginx-1] router.access" in router.logs(), 10, message="the router's access line")
    [access] = nginx.access_entries()
    assert (access["request_id"], access["status"]) == ("through-nginx-1", 200)


def test_nginx_makes_the_request_id_when_the_client_sends_none(start_router, start_nginx, fake):
    router = start_router()
    nginx = start_nginx(router.port)
    response = requests.post(nginx.url(CHAT), json=HELLO, timeout=30)
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    [access] = nginx.access_entries()
    assert access["request_id"] == request_id
    assert access["vendor"] == response.headers["X-Vendor-Source"]
    wait_until(lambda: f"[{request_id}] router.access" in router.logs(), 10, message="the router's access line")


def test_nginx_passes_the_client_address_and_request_id_upstream(start_nginx, fake):
    # The fake vendor as nginx's upstream records every header it receives.
    nginx = start_nginx(fake.port)
    response = requests.post(
        nginx.url("/openai/v1/chat/completions"),
        json=HELLO,
        headers={"X-Request-ID": "from-the-client", "X-Forwarded-For": "203.0.113.7"},
        timeout=30,
    )
    assert response.status_code == 200
    [received] = fake.requests()
    headers = received["headers"]
    assert headers["x-request-id"] == "from-the-client"
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert "connection" not in headers or headers["connection"].lower() != "close"


def established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED whose remote end is 127.0.0.1:``port``."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def test_nginx_keeps_connections_to_the_router_open_between_requests(start_router, start_nginx, fake):
    router = start_router()
    nginx = start_nginx(router.port)
    for _ in range(5):
        assert requests.get(nginx.url("/health"), headers={"Connection": "close"}, timeout=10).text == "OK"
    # Each client connection was closed; nginx's connection to gunicorn stays for the next one.
    assert established_to(router.port) == 1


def test_body_limit_matches_max_body_bytes_and_nginx_refuses_as_json(start_router, start_nginx, fake):
    router = start_router()
    nginx = start_nginx(router.port)
    limit = Settings().max_body_bytes
    headers = {"Content-Type": "application/json"}

    at_limit = requests.post(nginx.url(CHAT), data=b" " * limit, headers=headers, timeout=30)
    assert at_limit.status_code == 400  # reached the router, which found it empty
    assert "empty" in at_limit.json()["error"]["message"]

    over = requests.post(nginx.url(CHAT), data=b" " * (limit + 1), headers=headers, timeout=30)
    assert over.status_code == 413
    assert over.headers["Content-Type"] == "application/json"
    assert over.json()["error"]["code"] == "request_too_large"
    assert over.headers["X-Request-ID"]


def test_nginx_answers_json_when_the_router_is_down(start_nginx):
    nginx = start_nginx(free_port())  # nothing listens there
    response = requests.post(nginx.url(CHAT), json=HELLO, timeout=30)
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def active_config() -> str:
    """configs/nginx/router.conf without its comments."""
    return "\n".join(line.split("#", 1)[0] for line in CONFIG.read_text().splitlines())


def directive(name: str) -> str:
    [value] = re.findall(rf"^\s*{name}\s+([^;]+);", active_config(), flags=re.MULTILINE)
    return value


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def test_config_timeouts_and_limits_agree_with_the_router_defaults():
    defaults = Settings()
    read_timeout = seconds(directive("proxy_read_timeout"))
    assert read_timeout > defaults.stream_keepalive_seconds
    assert read_timeout > defaults.upstream_read_timeout
    body = directive("client_max_body_size")
    assert int(body[:-1]) * {"k": 1024, "m": 1024**2}[body[-1]] == defaults.max_body_bytes
    # nginx closes idle upstream connections before gunicorn does (KEEPALIVE, app/settings.py),
    # even with the default; docker-compose.yml sets it far above, against stalls of the machine.
    gunicorn_keepalive = ServerSettings.keepalive
    assert seconds(directive("keepalive_timeout")) < int(gunicorn_keepalive)
    assert compose_keepalive() >= seconds(directive("keepalive_timeout")) + 20
    # Streams rely on the router's X-Accel-Buffering header being obeyed, and on no compression.
    assert "proxy_ignore_headers" not in active_config()
    assert not re.search(r"^\s*gzip\s+on", active_config(), flags=re.MULTILINE)


def compose_keepalive() -> int:
    """The router's KEEPALIVE behind nginx, as docker-compose.yml sets it."""
    return int(re.search(r'KEEPALIVE: "(\d+)"', (ROOT / "docker-compose.yml").read_text()).group(1))


def test_a_stall_of_the_whole_machine_does_not_make_nginx_reuse_a_connection_the_router_closed(
    start_router, start_nginx
):
    # Every nginx and router process stopped for 6 s (a stalled machine) while 16 clients call:
    # afterwards nginx sends the requests that arrived meanwhile on idle upstream connections
    # before it runs its own keepalive_timeout. With KEEPALIVE 5 gunicorn's timer has also run
    # out, and it closes such a connection, request unread: nginx answers that POST 502 and does
    # not send it again. With the KEEPALIVE docker-compose.yml sets behind nginx, gunicorn never
    # closes one first.
    router = start_router(workers=2, KEEPALIVE=str(compose_keepalive()))
    nginx = start_nginx(router.port)
    statuses: list[str] = []
    stopping = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stopping.is_set():
                try:
                    statuses.append(str(session.post(nginx.url(CHAT), json=HELLO, timeout=30).status_code))
                except requests.RequestException as exc:
                    statuses.append(type(exc).__name__)
                time.sleep(0.05)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    for thread in clients:
        thread.start()
    nginx_processes = [nginx.process.pid, *children(nginx.process.pid)]
    router_processes = [router.process.pid, *children(router.process.pid)]
    for _ in range(3):
        time.sleep(2)
        for pid in nginx_processes + router_processes:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(6)
        # The router wakes a moment first and runs its expired timers; then nginx handles the
        # requests that came in, and the closes, in whatever order its one wake-up lists them.
        for pid in router_processes:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
        for pid in nginx_processes:
            os.kill(pid, signal.SIGCONT)
    time.sleep(1)
    stopping.set()
    for thread in clients:
        thread.join(40)
    assert len(statuses) > 400
    assert set(statuses) == {"200"}, Counter(statuses)
    assert "[error]" not in nginx.error_log()


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (nginx's or gunicorn's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process has just gone
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
