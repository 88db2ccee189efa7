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

from tests.support.processes import ROOT, FakeVendorProcess, RouterProcess, free_port, router_config

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


@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node and npm are not installed")
def test_node_sdk_example_runs_against_the_router(full_router, fake, tmp_path):
    # npm installs next to the script, in a temporary copy: nothing is cached in the repository.
    for name in ("package.json", "chat.mjs"):
        shutil.copy(EXAMPLES / "node" / name, tmp_path)
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    result = run(["node", "chat.mjs"], full_router.base, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_sdk_example_output(result.stdout)


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
