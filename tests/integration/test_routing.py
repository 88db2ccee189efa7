"""Routing policy over real sockets: weights, aliases, capabilities, the v3 models file and keys
from the environment, with the real gunicorn + gevent router in front of the fake vendor."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.support.keys import GEMINI_KEY, OPENAI_KEY
from tests.support.processes import RouterProcess
from tests.support.sdk import sdk

HELLO = [{"role": "user", "content": "Hello"}]
IMAGE_MESSAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    }
]
# 1 degree of freedom: the 0.999 quantile. A fair 75/25 split stays below it 999 times in 1000;
# an even split over 400 requests scores ~130.
CHI_SQUARE_1_DOF = 10.83


def post_many(server: RouterProcess, bodies: list[dict[str, Any]], threads: int = 8) -> list[requests.Response]:
    """POST each body to /v1/chat/completions from a few threads (one keep-alive session each)."""
    local = threading.local()

    def post(body: dict[str, Any]) -> requests.Response:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session.post(server.url("/v1/chat/completions"), json=body, timeout=30)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, bodies))


def chi_square(counts: Counter, expected: dict[str, float]) -> float:
    assert set(counts) <= set(expected), counts
    return sum((counts[key] - value) ** 2 / value for key, value in expected.items())


def test_weights_three_to_one_split_traffic_seventy_five_twenty_five(start_router, fake):
    server = start_router(
        models=[
            {"vendor": "openai", "model": "gpt-4o-mini", "weight": 3},
            {"vendor": "openai", "model": "gpt-4o", "weight": 1},
        ],
        workers=2,
    )
    total = 400
    answers = post_many(server, [{"model": "any-model", "messages": HELLO}] * total)

    assert [a.status_code for a in answers] == [200] * total
    counts = Counter(r["body"]["model"] for r in fake.requests("openai"))
    assert sum(counts.values()) == total
    assert chi_square(counts, {"gpt-4o-mini": total * 0.75, "gpt-4o": total * 0.25}) < CHI_SQUARE_1_DOF, counts
    assert "shares of chat: openai#1/gpt-4o-mini 75.0%, openai#1/gpt-4o 25.0%" in server.logs()


def test_alias_group_receives_only_its_members_with_their_weights(start_router, fake):
    server = start_router(
        models=[
            {"vendor": "openai", "model": "gpt-4o-mini", "weight": 3, "aliases": ["fast"]},
            {"vendor": "gemini", "model": "gemini-2.0-flash", "aliases": ["fast"]},
            {"vendor": "openai", "model": "gpt-4o", "aliases": ["smart"]},
        ],
        workers=2,
    )
    total = 400
    answers = post_many(server, [{"model": "fast", "messages": HELLO}] * total)

    assert [a.status_code for a in answers] == [200] * total
    assert {a.json()["model"] for a in answers} == {"fast"}
    counts = Counter(r["body"]["model"] for r in fake.requests())
    assert "gpt-4o" not in counts
    assert chi_square(counts, {"gpt-4o-mini": total * 0.75, "gemini-2.0-flash": total * 0.25}) < CHI_SQUARE_1_DOF
    # The header names the model each answer really came from.
    assert Counter(a.headers["X-Model-Source"] for a in answers) == counts

    fake.reset()
    smart = sdk(server).chat.completions.with_raw_response.create(model="smart", messages=HELLO)
    assert smart.parse().model == "smart"
    assert smart.headers["x-model-source"] == "gpt-4o"
    assert [r["body"]["model"] for r in fake.requests()] == ["gpt-4o"]

    listed = {(m.id, m.owned_by) for m in sdk(server).models.list()}
    assert {("fast", "router"), ("smart", "router"), ("gpt-4o", "openai")} <= listed
    assert sdk(server).models.retrieve("fast").owned_by == "router"


def test_image_request_never_reaches_a_model_without_support_image(start_router, fake):
    server = start_router(
        models=[
            {"vendor": "openai", "model": "gpt-4o", "config": {"support_image": True, "support_streaming": True}},
            {
                "vendor": "gemini",
                "model": "gemini-2.0-flash",
                "config": {"support_tools": True, "support_streaming": True},
            },
        ],
    )
    answers = post_many(server, [{"model": "any-model", "messages": IMAGE_MESSAGE}] * 40, threads=4)
    assert [a.status_code for a in answers] == [200] * 40
    assert {r["body"]["model"] for r in fake.requests()} == {"gpt-4o"}

    # A text request may still go to either.
    post_many(server, [{"model": "any-model", "messages": HELLO}] * 40, threads=4)
    assert {r["body"]["model"] for r in fake.requests()} == {"gpt-4o", "gemini-2.0-flash"}

    fake.reset()
    refused = requests.post(
        server.url("/v1/chat/completions?vendor=gemini"),
        json={"model": "any-model", "messages": IMAGE_MESSAGE, "stream": True},
        timeout=10,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "No configured model of vendor gemini supports images",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "capability_not_supported",
    }
    assert fake.requests() == []


def test_v3_models_file_of_the_go_router_loads_and_serves(start_router, fake):
    models = {
        "vendors": {
            "openai": "https://api.openai.com/v1",
            "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
            # A vendor only this file names, played by the fake.
            "local": fake.url("local") + "/v1",
        },
        "models": [
            {
                "vendor": "gemini",
                "model": "gemini-2.5-flash",
                "config": {
                    "support_image": True,
                    "support_video": True,
                    "support_tools": True,
                    "support_streaming": True,
                },
            },
            {"vendor": "openai", "model": "gpt-4o-mini"},
            {"vendor": "local", "model": "llama-3.3", "config": {"support_streaming": True}},
        ],
    }
    credentials = [
        {"platform": "openai", "type": "api-key", "value": OPENAI_KEY},
        {"platform": "gemini", "type": "api-key", "value": GEMINI_KEY},
        {"platform": "local", "type": "api-key", "value": "local-key-0123456789"},
    ]
    server = start_router(models=models, credentials=credentials)
    client = sdk(server)

    for vendor, model in (("gemini", "gemini-2.5-flash"), ("openai", "gpt-4o-mini"), ("local", "llama-3.3")):
        raw = client.chat.completions.with_raw_response.create(
            model="any-model", messages=HELLO, extra_query={"vendor": vendor}
        )
        assert raw.parse().choices[0].message.content.startswith(f"Hello from {vendor}!")
        assert raw.headers["x-model-source"] == model
    stream = client.chat.completions.create(model="llama-3.3", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("Hello from local!")
    # <VENDOR>_BASE_URL (pointing at the fake) still beats the file's vendors.
    assert [r["vendor"] for r in fake.requests()] == ["gemini", "openai", "local", "local"]
    assert "3 models (v3 format)" in server.logs()


def test_keys_from_the_environment_serve_both_vendors_without_a_credentials_file(start_router, fake):
    openai_key = "sk-env-only-openai-0123456789"
    gemini_key = "AIzaEnvOnlyGemini0123456789"
    server = start_router(credentials="absent", OPENAI_API_KEY=openai_key, GEMINI_API_KEY_1=gemini_key)
    client = sdk(server)

    for vendor in ("openai", "gemini"):
        answer = client.chat.completions.create(model="any-model", messages=HELLO, extra_query={"vendor": vendor})
        assert answer.choices[0].message.content.startswith(f"Hello from {vendor}!")
    keys = {r["vendor"]: r["headers"]["authorization"] for r in fake.requests()}
    assert keys == {"openai": f"Bearer {openai_key}", "gemini": f"Bearer {gemini_key}"}

    logs = server.logs()
    assert "keys from environment variables OPENAI_API_KEY, GEMINI_API_KEY_1" in logs
    assert openai_key not in logs and gemini_key not in logs
    assert "vendors without credentials" not in logs


def test_an_existing_credentials_file_wins_over_key_variables_and_says_so(start_router, fake):
    ignored = "sk-env-ignored-0123456789abc"
    server = start_router(OPENAI_API_KEY=ignored)
    sdk(server).chat.completions.create(model="any-model", messages=HELLO, extra_query={"vendor": "openai"})
    assert [r["headers"]["authorization"] for r in fake.requests()] == [f"Bearer {OPENAI_KEY}"]
    logs = server.logs()
    assert "alone supplies the keys: OPENAI_API_KEY is set but not read" in logs
    assert ignored not in logs
