"""examples/ run as a user would run them, against the real router and the fake vendor."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import (
    ROOT,
    FakeVendorProcess,
    RouterProcess,
    free_port,
    node_tools_missing,
    npm_install,
    router_config,
)

EXAMPLES = ROOT / "examples"
POSTMAN = EXAMPLES / "postman" / "generative-api-router.postman_collection.json"
CHAT_AND_EMBEDDING_MODELS = [
    {"vendor": "openai", "model": "gpt-4o"},
    {"vendor": "gemini", "model": "gemini-2.0-flash"},
    {"vendor": "openai", "model": "text-embedding-3-small", "type": "embedding"},
    {"vendor": "gemini", "model": "gemini-embedding-001", "type": "embedding"},
]


@pytest.fixture(scope="module")
def full_router(fake_vendor: FakeVendorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """A router with chat and embedding models, as configs/models.json has: every example works."""
    directory = tmp_path_factory.mktemp("examples-router")
    server = RouterProcess(
        router_config(directory, fake_vendor, models=CHAT_AND_EMBEDDING_MODELS), directory / "router.log"
    )
    yield server
    server.stop()


def run(argv: list[str], base_url: str, cwd: Path = ROOT, timeout: float = 60, **env: str):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    environment.update(ROUTER_URL=base_url, **env)
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def test_curl_basic_prints_a_chat_completion(router, fake):
    result = run(["bash", "examples/curl/basic.sh"], router.base)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"] == "any-model"
    assert answer["choices"][0]["message"]["content"].endswith("You said: Hello, how are you?")


def test_curl_streaming_prints_events_as_they_come_ending_with_done(router, fake):
    result = run(["bash", "examples/curl/streaming.sh"], router.base)
    assert result.returncode == 0, result.stderr
    events = [line.removeprefix("data: ") for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text.endswith("You said: Write a short poem")


def test_curl_tools_answer_has_a_tool_call_with_an_id(router, fake):
    result = run(["bash", "examples/curl/tools.sh"], router.base)
    assert result.returncode == 0, result.stderr
    choice = json.loads(result.stdout)["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert call["id"] and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "example"}
    assert choice["finish_reason"] == "tool_calls"


def test_curl_vendor_lists_and_answers_from_that_vendor_only(router, fake):
    result = run(["bash", "examples/curl/vendor.sh"], router.base, VENDOR="openai")
    assert result.returncode == 0, result.stderr
    models, rest = result.stdout.split("\n", 1)
    assert [m["id"] for m in json.loads(models)["data"]] == ["gpt-4o"]
    assert "x-vendor-source: openai" in rest.lower()
    assert [r["vendor"] for r in fake.requests()] == ["openai"]


def test_curl_responses_prints_a_response_object(full_router, fake):
    result = run(["bash", "examples/curl/responses.sh"], full_router.base)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["object"], answer["model"], answer["status"]) == ("response", "any-model", "completed")
    assert answer["output"][0]["content"][0]["text"].endswith("You said: Hello, how are you?")
    assert fake.requests()[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_curl_embeddings_prints_one_vector_per_input(full_router, fake):
    result = run(["bash", "examples/curl/embeddings.sh"], full_router.base)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert fake.requests()[0]["endpoint"] == "embeddings"


def test_curl_scripts_send_the_client_key_and_fail_loudly_without_it(start_router, fake):
    router = start_router(ROUTER_API_KEYS="example-client-key-0123456789")
    refused = run(["bash", "examples/curl/basic.sh"], router.base)
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_api_key"  # the error body is shown
    accepted = run(["bash", "examples/curl/basic.sh"], router.base, ROUTER_API_KEY="example-client-key-0123456789")
    assert accepted.returncode == 0, accepted.stdout
    unreachable = run(["bash", "examples/curl/basic.sh"], f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode != 0


def assert_sdk_example_output(output: str) -> None:
    lines = output.splitlines()
    assert lines[0].startswith("chat: Hello from ") and lines[0].endswith("You said: Hello, how are you?")
    assert lines[1].strip().split()[:2] == ["answered", "by"]
    assert lines[2].startswith("stream: Hello from ") and lines[2].endswith("You said: Write a short poem")
    assert lines[3].startswith("tool call: call_") and "get_weather" in lines[3]
    assert lines[4].split() == ["finish_reason:", "tool_calls"]
    assert lines[5].startswith("pinned: gemini - Hello from gemini!")
    assert lines[6] == "models: gpt-4o, gemini-2.0-flash, text-embedding-3-small, gemini-embedding-001"
    assert lines[7].startswith("responses: Hello from ") and lines[7].endswith("You said: Hello from Responses")
    assert lines[8] == "embeddings: 2 vectors of 8 values"


def test_python_sdk_example_runs_against_the_router(full_router, fake):
    result = run([sys.executable, "examples/python/chat.py"], full_router.base)
    assert result.returncode == 0, result.stderr
    assert_sdk_example_output(result.stdout)


@pytest.fixture(scope="module")
def node_packages() -> Path:
    """examples/node's packages: npm ci from its lock file into a cache (tests.support.processes.npm_install).

    Without node/npm the Node examples skip, except under CI (``CI`` set), where they fail.
    """
    missing = node_tools_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return npm_install(EXAMPLES / "node")


def node_example(script: str, packages: Path, directory: Path) -> Path:
    """``script`` copied into ``directory`` next to the installed packages, as a user's checkout has it."""
    for name in ("package.json", script):
        shutil.copy(EXAMPLES / "node" / name, directory)
    (directory / "node_modules").symlink_to(packages / "node_modules")
    return directory


def test_node_sdk_example_runs_against_the_router(full_router, fake, node_packages, tmp_path):
    directory = node_example("chat.mjs", node_packages, tmp_path)
    result = run(["node", "chat.mjs"], full_router.base, cwd=directory)
    assert result.returncode == 0, result.stderr
    assert_sdk_example_output(result.stdout)


def test_node_anthropic_sdk_example_sends_a_message_and_streams_one(router, fake, node_packages, tmp_path):
    directory = node_example("messages.mjs", node_packages, tmp_path)
    result = run(["node", "messages.mjs"], router.base, cwd=directory)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("message: Hello from ") and lines[0].endswith("You said: Hello, how are you?")
    assert lines[1].split()[:2] == ["answered", "by"] and lines[1].split()[2] in ("openai", "gemini")
    assert re.fullmatch(r"  stop_reason: end_turn, [1-9]\d* tokens in, [1-9]\d* out", lines[2]), lines[2]
    assert lines[3].startswith("stream: Hello from ") and lines[3].endswith("You said: Write a short poem")
    assert re.fullmatch(r"  final message: end_turn, 1 block\(s\), [1-9]\d* tokens out", lines[4]), lines[4]
    first, second = fake.requests()
    assert first["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert second["body"]["stream"] is True
    assert not [h for r in (first, second) for h in r["headers"] if h.startswith("anthropic-")]


def test_curl_messages_prints_a_message_or_its_events(router, fake):
    result = run(["bash", "examples/curl/messages.sh"], router.base)
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert (message["type"], message["role"], message["model"]) == ("message", "assistant", "any-model")
    assert message["stop_reason"] == "end_turn"
    [block] = message["content"]
    assert block["type"] == "text" and block["text"].endswith("You said: Hello, how are you?")

    streamed = run(["bash", "examples/curl/messages.sh"], router.base, STREAM="1")
    assert streamed.returncode == 0, streamed.stderr
    events = []
    for event in streamed.stdout.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in event.splitlines() if not line.startswith(":"))
        data = json.loads(fields["data"])
        assert fields["event"] == data["type"]
        events.append(data)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text.endswith("You said: Hello, how are you?")
    assert [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"] == ["end_turn"]


def postman_items() -> list[dict]:
    collection = json.loads(POSTMAN.read_text())
    assert collection["info"]["schema"] == "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"

    def flatten(items: list[dict]) -> list[dict]:
        return [leaf for item in items for leaf in (flatten(item["item"]) if "item" in item else [item])]

    return flatten(collection["item"])


def postman_request(item: dict, variables: dict[str, str]) -> requests.PreparedRequest:
    """The request Postman would send for ``item`` with these collection variables."""

    def fill(text: str) -> str:
        for name, value in variables.items():
            text = text.replace("{{" + name + "}}", value)
        assert "{{" not in text, f"undefined variable in {text}"
        return text

    spec = item["request"]
    headers = {h["key"]: fill(h["value"]) for h in spec.get("header", [])}
    if variables.get("apiKey"):
        headers["Authorization"] = f"Bearer {variables['apiKey']}"
    body = fill(spec["body"]["raw"]).encode() if "body" in spec else None
    return requests.Request(spec["method"], fill(spec["url"]["raw"]), headers=headers, data=body).prepare()


def expected_status(item: dict) -> int:
    """The status the item's own Postman test expects (every item has exactly one such check)."""
    [event] = [event for event in item["event"] if event["listen"] == "test"]
    [status] = re.findall(r"to\.have\.status\((\d+)\)", "\n".join(event["script"]["exec"]))
    return int(status)


def test_postman_collection_covers_every_endpoint_and_every_request_answers_as_its_test_expects(
    full_router, fake, make_app
):
    collection = json.loads(POSTMAN.read_text())
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables["baseUrl"] == "http://localhost:8082"
    variables["baseUrl"] = full_router.base

    adapter = make_app().url_map.bind("localhost")
    endpoints = {rule.endpoint for rule in adapter.map.iter_rules() if rule.endpoint != "static"}
    covered = set()
    with requests.Session() as session:
        for item in postman_items():
            request = postman_request(item, variables)
            path = requests.utils.urlparse(request.url).path
            covered.add(adapter.match(path, method=request.method)[0])
            response = session.send(request, timeout=30)
            assert response.status_code == expected_status(item), (item["name"], response.text)
            if json.loads(request.body or b"{}").get("stream"):
                assert response.headers["Content-Type"].startswith("text/event-stream")
    assert covered == endpoints
