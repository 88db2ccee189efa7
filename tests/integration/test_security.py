"""Security over real sockets: client keys with the OpenAI SDK, and no secret in any log or answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.support.processes import RouterProcess
from tests.support.redis_server import REDIS_SERVER, RedisServer

CLIENT_KEY = "rk-client-alpha-5f4e3d2c1b0a9988"
CLIENT_KEY_2 = "rk-client-beta-0a1b2c3d4e5f6677"
WRONG_KEY = "rk-wrong-guess-7766554433221100"
OPENAI_SECRET = "sk-proj-SecretOpenAI-9f8e7d6c5b4a3210"
GEMINI_SECRET = "AIzaSecretGemini-0123456789ab"
REDIS_PASSWORD = "redis-pass-0a1b2c3d4e5f6a7b"
HELLO = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}
CHAT = "/v1/chat/completions"


def sdk(router: RouterProcess, api_key: str) -> openai.OpenAI:
    """The official OpenAI SDK with ``api_key`` as its key, no retries."""
    return openai.OpenAI(base_url=router.url("/v1"), api_key=api_key, max_retries=0)


def test_sdk_gets_in_with_a_valid_key_and_gets_authentication_error_without(start_router):
    router = start_router(ROUTER_API_KEYS=f"{CLIENT_KEY},{CLIENT_KEY_2}")
    # Clients are closed: an idle keep-alive connection would hold the router's shutdown.
    with sdk(router, CLIENT_KEY) as client, sdk(router, CLIENT_KEY_2) as other, sdk(router, WRONG_KEY) as stranger:
        answer = client.chat.completions.create(**HELLO)
        assert answer.choices[0].message.content.startswith("Hello from")
        stream = other.chat.completions.create(**HELLO, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices).startswith("Hello")
        assert [model.id for model in client.models.list()]

        with pytest.raises(openai.AuthenticationError) as refused:
            stranger.chat.completions.create(**HELLO)
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"

    health = requests.get(router.url("/health"), headers={"Connection": "close"}, timeout=5)
    assert health.status_code == 200
    # gunicorn names itself without a version, and nothing adds one.
    assert health.headers.get("Server", "gunicorn") == "gunicorn"
    assert health.headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer | None]:
    """A password-protected Redis when redis-server is installed (its password is a secret too)."""
    if REDIS_SERVER is None:
        yield None
        return
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    yield server
    server.kill()


def test_no_key_in_logs_or_answers_of_a_full_debug_run(start_router, fake, redis_with_password, monkeypatch):
    monkeypatch.setenv("ITEST_SECRET_OPENAI", OPENAI_SECRET)  # read through ${...} in credentials.json
    storage = {"RATE_LIMIT_STORAGE": redis_with_password.url} if redis_with_password else {}
    router = start_router(
        credentials=[
            {"platform": "openai", "type": "api-key", "value": "${ITEST_SECRET_OPENAI}"},
            {"platform": "gemini", "type": "api-key", "value": GEMINI_SECRET},
        ],
        workers=2,
        LOG_LEVEL="debug",
        ROUTER_API_KEYS=f"{CLIENT_KEY},{CLIENT_KEY_2}",
        RATE_LIMIT="20/minute",
        UPSTREAM_READ_TIMEOUT="1",
        MAX_BODY_BYTES="100000",
        **storage,
    )
    answers: list[requests.Response] = []
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}

    def call(method: str, path: str, **kwargs) -> requests.Response:
        # Connection: close, because an idle keep-alive connection would hold the router's
        # graceful shutdown below for GRACEFUL_TIMEOUT.
        kwargs["headers"] = {**kwargs.get("headers", auth), "Connection": "close"}
        response = requests.request(method, router.url(path), timeout=10, **kwargs)
        response.content  # noqa: B018 -- read streams to the end
        answers.append(response)
        return response

    # Success, whole and streamed, through both vendors.
    assert call("POST", f"{CHAT}?vendor=openai", json=HELLO).status_code == 200
    assert call("POST", f"{CHAT}?vendor=gemini", json={**HELLO, "stream": True}).status_code == 200
    # Vendor errors whose text echoes the vendor key, in every format.
    fake.behave("openai", status=401, error_message=f"Incorrect API key provided: {OPENAI_SECRET}.")
    echoed = call("POST", f"{CHAT}?vendor=openai", json=HELLO)
    assert echoed.status_code == 401
    assert "[REDACTED]" in echoed.json()["error"]["message"]
    fake.behave("gemini", status=400, error_message=f"API key not valid: {GEMINI_SECRET}")
    assert call("POST", f"{CHAT}?vendor=gemini", json=HELLO).status_code == 400
    fake.behave("openai", status=503, error_format="html", error_message=f"down; key {OPENAI_SECRET}")
    assert call("POST", f"{CHAT}?vendor=openai", json=HELLO).status_code >= 500
    fake.behave("openai", status=500, error_format="text", error_message=f"crash with Bearer {OPENAI_SECRET}")
    assert call("POST", f"{CHAT}?vendor=openai", json=HELLO).status_code >= 500
    # A timeout, and a stream the vendor drops half-way.
    fake.reset()
    fake.behave("openai", delay=3)
    assert call("POST", f"{CHAT}?vendor=openai", json=HELLO).status_code == 504
    fake.reset()
    fake.behave("gemini", drop_after=1)
    assert call("POST", f"{CHAT}?vendor=gemini", json={**HELLO, "stream": True}).status_code == 200
    # Bad input, some of it carrying a client key where a careless log would print it.
    assert call("POST", CHAT, data=b'{"messages": [', headers={**auth, "Content-Type": "application/json"}).ok is False
    assert call("POST", CHAT, json={**HELLO, "user": CLIENT_KEY, "stream": "yes"}).status_code == 400
    assert call("POST", CHAT, data="hello", headers={**auth, "Content-Type": "text/plain"}).status_code == 415
    assert call("POST", CHAT, json={**HELLO, "pad": "x" * 200_000}).status_code == 413
    # Clients without the right key, one of them putting a key in the URL.
    assert call("POST", CHAT, json=HELLO, headers={}).status_code == 401
    assert call("POST", CHAT, json=HELLO, headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
    assert call("GET", f"/v1/models?api_key={WRONG_KEY}", headers={}).status_code == 401
    # Rate limited: the limit names the client by a hash.
    statuses = [
        call("GET", "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY_2}"}).status_code for _ in range(21)
    ]
    assert statuses[-1] == 429
    metrics = call("GET", "/metrics")
    assert metrics.status_code == 200

    # Keys travel to vendors in the Authorization header only, never in a URL.
    received = fake.requests()
    assert received
    for record in received:
        assert OPENAI_SECRET not in record["path"] and GEMINI_SECRET not in record["path"]
        assert record["headers"]["authorization"] in (f"Bearer {OPENAI_SECRET}", f"Bearer {GEMINI_SECRET}")

    router.stop()  # so gunicorn's shutdown lines are in the log too
    logs = router.log_path.read_text()
    assert " DEBUG " in logs  # the run really logged at debug level
    assert "504" in logs and "401" in logs
    secrets = [OPENAI_SECRET, GEMINI_SECRET, CLIENT_KEY, CLIENT_KEY_2, WRONG_KEY, REDIS_PASSWORD]
    for secret in secrets:
        assert secret not in logs, f"{secret[:8]}... in the log"
        for answer in answers:
            assert secret.encode() not in answer.content, f"{secret[:8]}... in the answer to {answer.url}"
            assert all(secret not in value for value in answer.headers.values())
