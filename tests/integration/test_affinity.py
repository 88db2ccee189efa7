"""Session affinity and cached tokens over real sockets: gunicorn + gevent router, the fake vendor.

A session (X-Session-Id, X-Claude-Code-Session-Id or the body's prompt_cache_key) keeps its
combination across workers, moves only while its combination cools down, and comes back; the
fake vendor's emulated prompt cache (one per credential) shows the cached tokens the router
counts and translates on chat, Responses and Messages.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support.prometheus import scrape

CHAT = "/v1/chat/completions"
# Four keys of one model: where a session lands shows as the key the fake received.
FOUR_KEYS = [{"platform": "openai", "type": "api-key", "value": f"sk-affinity-{n}-0123456789abcdef"} for n in range(4)]
ONE_MODEL = [{"vendor": "openai", "model": "gpt-4o"}]
SYSTEM = "You are a coding agent. " + "Follow the project's rules. " * 40


def post(router, path: str, body: dict, headers: dict | None = None, **params: str) -> requests.Response:
    """One call on its own connection, so either worker may take it."""
    response = requests.post(
        router.url(path), params=params, json=body, headers={"Connection": "close", **(headers or {})}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def hello(text: str = "Hello") -> dict:
    return {"model": "any-model", "messages": [{"role": "user", "content": text}]}


@contextlib.contextmanager
def held_connections(router) -> Iterator[Callable[[], None]]:
    """``hold()`` opens one more idle connection to the router, kept open until the block ends.

    Each worker accepts a new connection only while it holds no more than the other, so the idle
    ones mostly alternate between the two workers, and so do the calls made between them: one
    session's calls are answered by both workers, not all by whichever happens to wake first.
    """
    opened: list[socket.socket] = []

    def hold() -> None:
        opened.append(socket.create_connection(("127.0.0.1", router.port), timeout=5))
        time.sleep(0.05)  # accepted before the next connection arrives

    try:
        yield hold
    finally:
        for connection in opened:
            connection.close()


def keys_used(fake, vendor: str = "openai") -> list[str]:
    """The key of every chat request the fake received for ``vendor``, oldest first."""
    return [r["headers"]["authorization"] for r in fake.requests(vendor) if r["endpoint"] == "chat"]


def test_the_same_session_reaches_the_same_key_from_either_of_two_workers(start_router, fake):
    router = start_router(models=ONE_MODEL, credentials=FOUR_KEYS, workers=2)
    for header in ("X-Session-Id", "X-Claude-Code-Session-Id"):
        for session in ("agent-a", "agent-b", "agent-c"):
            fake.reset()
            # At least 12 turns, and on until both workers have answered this session (each
            # has its own pool of vendor connections, so two connections reach the fake).
            with held_connections(router) as hold:
                for turn in range(40):
                    hold()
                    post(router, CHAT, hello(f"turn {turn}"), {header: session})
                    if turn >= 11 and len({r["connection"] for r in fake.requests("openai")}) >= 2:
                        break
            assert len({r["connection"] for r in fake.requests("openai")}) >= 2, (header, session)
            assert len(set(keys_used(fake))) == 1, (header, session)
    # The body's prompt_cache_key names a session too.
    fake.reset()
    for turn in range(12):
        post(router, CHAT, {**hello(f"turn {turn}"), "prompt_cache_key": "cache-key-1"})
    assert len(set(keys_used(fake))) == 1
    # Different sessions spread over the keys.
    fake.reset()
    for n in range(24):
        post(router, CHAT, hello(), {"X-Session-Id": f"spread-{n}"})
    assert len(set(keys_used(fake))) >= 3


def test_without_a_session_and_with_affinity_off_requests_spread_as_before(start_router, fake):
    for env, headers in (({}, {}), ({"AFFINITY": "off"}, {"X-Session-Id": "one-session"})):
        router = start_router(models=ONE_MODEL, credentials=FOUR_KEYS, **env)
        fake.reset()
        for _ in range(40):
            post(router, CHAT, hello(), headers)
        # Even odds over 4 keys: 40 draws all on one or two keys is a ~1e-12 event.
        assert len(set(keys_used(fake))) >= 3


THREE_VENDORS = ["alpha", "beta", "gamma"]


def test_a_failing_combinations_sessions_move_while_it_cools_and_only_they_then_come_back(start_router, fake):
    router = start_router(
        models=[{"vendor": name, "model": f"model-{name}"} for name in THREE_VENDORS],
        credentials=[{"platform": name, "value": f"sk-{name}-0123456789abcdef"} for name in THREE_VENDORS],
        vendors=[{"name": name, "base_url": fake.url(name)} for name in THREE_VENDORS],
        COOLDOWN_SECONDS="3",
    )
    sessions = [f"session-{n}" for n in range(18)]

    def round_of_calls() -> dict[str, tuple[str, str]]:
        """Each session's (answering vendor, attempts) for one call."""
        answers = {}
        for session in sessions:
            response = post(router, CHAT, hello(), {"X-Session-Id": session})
            answers[session] = (response.headers["X-Vendor-Source"], response.headers["X-Router-Attempts"])
        return answers

    before = round_of_calls()
    assert {attempts for _, attempts in before.values()} == {"1"}
    victim = Counter(vendor for vendor, _ in before.values()).most_common(1)[0][0]
    held = {s for s in sessions if before[s][0] == victim}
    fake.behave(victim, status=500)

    failing = round_of_calls()
    # The victim's first session fails over (two attempts), which cools the victim (one worker:
    # its cooldowns are the router's); its other sessions then go elsewhere at once. The
    # sessions of the other vendors never notice.
    assert [failing[s][1] for s in sessions if s in held] == ["2"] + ["1"] * (len(held) - 1)
    assert all(failing[s][0] != victim for s in held)
    assert {s: failing[s] for s in sessions if s not in held} == {s: before[s] for s in sessions if s not in held}
    # While the victim cools, its sessions keep to where they failed over to, in one attempt.
    assert round_of_calls() == {s: (failing[s][0], "1") for s in sessions}
    # ... and they spread over both other vendors rather than piling onto one.
    assert len({failing[s][0] for s in held}) == 2 or len(held) < 4
    fake.behave(victim)
    time.sleep(3.2)
    assert round_of_calls() == before


def test_prompt_cache_key_reaches_openai_and_never_gemini(router, fake):
    body = {**hello(), "prompt_cache_key": "project-42"}
    for vendor in ("openai", "gemini"):
        post(router, CHAT, body, vendor=vendor)
        post(router, "/v1/responses", {"input": "Hi", "prompt_cache_key": "project-42"}, vendor=vendor)
    sent = {vendor: [r["body"] for r in fake.requests(vendor)] for vendor in ("openai", "gemini")}
    assert [b.get("prompt_cache_key") for b in sent["openai"]] == ["project-42", "project-42"]
    assert all("prompt_cache_key" not in b for b in sent["gemini"]) and len(sent["gemini"]) == 2


def conversation(turns: int) -> list[dict]:
    """An agent's growing conversation: the same long system prompt, then ``turns`` exchanges."""
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        messages += [{"role": "user", "content": f"Step {turn}: fix the next test."}]
        messages += [{"role": "assistant", "content": f"Fixed step {turn}."}]
    return [*messages, {"role": "user", "content": f"Step {turns}: and now?"}]


def access_lines(router) -> list[dict]:
    lines = [json.loads(line) for line in router.log_path.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "router.access" and line["path"] != "/metrics"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_cached_tokens_are_passed_through_counted_and_on_the_access_line(start_router, fake, stream):
    router = start_router(models=ONE_MODEL, credentials=FOUR_KEYS, workers=2, LOG_FORMAT="json")
    fake.behave("openai", prefix_cache=16)
    usages = []
    for turns in range(4):
        body = {"model": "any-model", "messages": conversation(turns), "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        response = post(router, CHAT, body, {"X-Session-Id": "agent-session"})
        # A stream's usage is in its last chunk, before [DONE].
        usages.append(json.loads(response.text.split("data: ")[-2])["usage"] if stream else response.json()["usage"])
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usages]
    # The session stays on one key, whose cache holds every earlier turn's prefix.
    assert cached[0] == 0 and all(c > 0 for c in cached[1:]) and cached == sorted(cached)
    metrics = scrape(router.base)
    assert metrics.value("router_tokens_total", kind="cached_input", vendor="openai", model="gpt-4o") == sum(cached)
    assert metrics.value("router_tokens_total", kind="prompt") == sum(u["prompt_tokens"] for u in usages)
    router.stop()
    lines = [line for line in access_lines(router) if line["path"] == CHAT]
    assert [(line["input_tokens"], line["cached_tokens"]) for line in lines] == [
        (u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"]) for u in usages
    ]
    assert all(line["output_tokens"] == u["completion_tokens"] for line, u in zip(lines, usages, strict=True))


def test_cached_tokens_are_translated_on_responses_and_messages(start_router, fake):
    router = start_router(models=ONE_MODEL, credentials=FOUR_KEYS)
    fake.behave("openai", prefix_cache=16)
    responses_usage = []
    for turns in range(3):
        items = [{"role": m["role"], "content": m["content"]} for m in conversation(turns)[1:]]
        body = {"model": "any-model", "instructions": SYSTEM, "input": items, "prompt_cache_key": "codex-1"}
        responses_usage.append(post(router, "/v1/responses", body).json()["usage"])
    assert responses_usage[0]["input_tokens_details"]["cached_tokens"] == 0
    assert all(u["input_tokens_details"]["cached_tokens"] > 0 for u in responses_usage[1:])

    sent = [r["body"] for r in fake.requests("openai")][-3:]
    assert {b["prompt_cache_key"] for b in sent} == {"codex-1"}

    fake.reset()
    fake.behave("openai", prefix_cache=16)
    headers = {"anthropic-version": "2023-06-01", "X-Claude-Code-Session-Id": "claude-1"}
    usages = []
    for stream in (False, True, False):
        body = {
            "model": "any-model",
            "max_tokens": 256,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": "Fix the failing test."}],
            "stream": stream,
        }
        response = post(router, "/v1/messages", body, headers)
        if stream:
            events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
            usages.append([e for e in events if e["type"] == "message_delta"][-1]["usage"])
        else:
            usages.append(response.json()["usage"])
    # The same prompt three times on one key: the last two read its whole blocks from the cache,
    # and Anthropic's input_tokens is what was not read from it (the total stays the prompt's).
    assert len({r["headers"]["authorization"] for r in fake.requests("openai")}) == 1
    assert usages[0]["cache_read_input_tokens"] == 0
    assert all(u["cache_read_input_tokens"] > 0 for u in usages[1:])
    assert len({u["input_tokens"] + u["cache_read_input_tokens"] for u in usages}) == 1
    assert all(u["input_tokens"] < usages[0]["input_tokens"] for u in usages[1:])
    assert all(u["cache_creation_input_tokens"] == 0 for u in usages)
