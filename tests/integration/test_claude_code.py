"""Claude Code itself against the real router: the Anthropic Messages endpoint proven by its main client.

Claude Code (pinned in claude_code/package.json + package-lock.json) is installed by ``npm ci``
into a cache on first use (tests.support.processes.npm_install); it is a native binary that needs nothing
else at run time. Each run gets a fresh HOME and working directory, talks to the router only
(``ANTHROPIC_BASE_URL``, a client key as ``ANTHROPIC_AUTH_TOKEN``, non-essential traffic off) and
must leave through a recording proxy for anything else, which the tests require to stay unused.
The router sends Claude Code's requests on to the fake vendor as chat completions, playing OpenAI
and Gemini (Gemini quirks). The fake answers plain text, or, when the prompt carries
``[[fake:tool_call NAME {args}]]``, that tool call, and it echoes a tool result that comes back
(see the fake vendor's "Directives").

Without node/npm these tests skip, except under CI (``CI`` set, as .ci/run does), where they fail:
they are the proof that Claude Code works through the router.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.processes import FakeVendorProcess, RouterProcess, node_tools_missing, npm_install, router_config

# The install may download ~75 MB on first use; a claude -p run itself takes about a second.
pytestmark = pytest.mark.timeout(900)

PACKAGE = Path(__file__).resolve().parent / "claude_code"
VERSION = "2.1.328"
CLIENT_KEY = "claude-code-client-key-0123456789"
# Aliases start with "claude": Claude Code's gateway model discovery keeps only such ids.
OPENAI_ALIAS = "claude-sonnet-router"
GEMINI_ALIAS = "claude-haiku-router"
MODELS = [
    {"vendor": "openai", "model": "gpt-4o", "aliases": [OPENAI_ALIAS]},
    {"vendor": "gemini", "model": "gemini-2.0-flash", "aliases": [GEMINI_ALIAS]},
]
# (alias, the vendor it must reach, the model id the vendor must be asked for)
ROUTES = [(OPENAI_ALIAS, "openai", "gpt-4o"), (GEMINI_ALIAS, "gemini", "gemini-2.0-flash")]
RUN_TIMEOUT = 180


@pytest.fixture(scope="module")
def claude() -> Path:
    """The Claude Code executable, installed on first use; a failed install fails the tests."""
    missing = node_tools_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    home = npm_install(PACKAGE)
    # The postinstall script puts the platform's native binary here (from an optional dependency).
    binary = home / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith(f"{VERSION} (Claude Code)"), (version.stdout, version.stderr)
    return binary


@pytest.fixture(scope="module")
def claude_router(fake_vendor: FakeVendorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """A router with the two aliases and client keys on."""
    directory = tmp_path_factory.mktemp("claude-code-router")
    env = {**router_config(directory, fake_vendor, models=MODELS), "ROUTER_API_KEYS": CLIENT_KEY}
    server = RouterProcess(env, directory / "router.log")
    yield server
    server.stop()


@pytest.fixture
def quiet_fake(fake: FakeVendorProcess) -> FakeVendorProcess:
    """The fake answers text unless told otherwise: Claude Code sends a dozen tools every time, and
    the fake's automatic tool call (the first tool, Agent) would start a subagent."""
    for vendor in ("openai", "gemini"):
        fake.behave(vendor, tool_calls=False)
    return fake


class Proxy:
    """An HTTP(S) proxy on 127.0.0.1 that refuses everything and records what was asked of it.

    Claude Code gets it as HTTPS_PROXY/HTTP_PROXY (with NO_PROXY for 127.0.0.1): any request
    not meant for the router (telemetry, updates, api.anthropic.com) lands here, not on the network.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0]
                    self.attempts.append(first.decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = Proxy()
    yield server
    server.close()


def claude_env(home: Path, base_url: str, proxy: Proxy, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the developer's (keys, config, proxies) reaches Claude Code."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": CLIENT_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "HTTPS_PROXY": proxy.url,
        "HTTP_PROXY": proxy.url,
        "NO_PROXY": "127.0.0.1,localhost",
        **extra,
    }


def run_claude(
    claude: Path,
    router: RouterProcess,
    proxy: Proxy,
    tmp_path: Path,
    prompt: str,
    *args: str,
    **env: str,
) -> dict[str, Any]:
    """``claude -p PROMPT --output-format json ARGS`` with a fresh HOME; its result object."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    command = [str(claude), "-p", prompt, "--output-format", "json", *args]
    done = subprocess.run(
        command,
        cwd=work,
        env=claude_env(home, router.base, proxy, **env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    where = (
        f"exit {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}\n"
        f"router log:\n{router.logs()[-4000:]}"
    )
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"claude printed no JSON result; {where}") from None
    assert result.get("type") == "result", where
    result["_where"] = where
    return result


def chat_requests(fake: FakeVendorProcess) -> list[dict[str, Any]]:
    records = fake.requests()
    assert records, "Claude Code's requests never reached the vendor"
    assert {r["endpoint"] for r in records} == {"chat"}, [r["path"] for r in records]
    return records


def texts(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def assert_nothing_anthropic_reached_the_vendor(records: list[dict[str, Any]], vendor_key: str | None = None) -> None:
    """Anthropic's own headers stay at the router (an OpenAI or Gemini vendor refuses unknown betas)."""
    for record in records:
        leaked = sorted(h for h in record["headers"] if h.startswith(("anthropic-", "x-claude")))
        assert not leaked, f"{record['path']} carried {leaked}"
        assert CLIENT_KEY not in json.dumps(record["headers"]), "the client key went to the vendor"
        assert "beta=true" not in record["path"]


@pytest.mark.parametrize(("alias", "vendor", "model"), ROUTES, ids=["openai", "gemini"])
def test_claude_code_answers_with_the_vendors_text(
    claude, claude_router, quiet_fake, proxy, tmp_path, alias, vendor, model
):
    result = run_claude(claude, claude_router, proxy, tmp_path, "say hi", "--model", alias)
    where = result["_where"]
    assert result["is_error"] is False, where
    assert result["subtype"] == "success", where
    assert result["num_turns"] == 1, where
    assert f"Hello from {vendor}!" in result["result"], where
    assert result["usage"]["output_tokens"] > 0, where
    records = chat_requests(quiet_fake)
    assert {r["vendor"] for r in records} == {vendor}, where
    assert {r["body"]["model"] for r in records} == {model}
    sent = records[-1]["body"]
    assert sent["stream"] is True, "Claude Code streams; the bridge should stream from the vendor too"
    assert any("say hi" in texts(m) for m in sent["messages"] if m["role"] == "user")
    assert any(t["function"]["name"] == "Bash" for t in sent["tools"])
    assert_nothing_anthropic_reached_the_vendor(records)
    assert proxy.attempts == [], "Claude Code went somewhere other than the router"


@pytest.mark.parametrize(("alias", "vendor", "model"), ROUTES, ids=["openai", "gemini"])
def test_claude_code_runs_the_tool_the_vendor_calls_and_the_result_travels_back(
    claude, claude_router, quiet_fake, proxy, tmp_path, alias, vendor, model
):
    directive = '[[fake:tool_call Bash {"command": "echo hello-from-bash", "description": "Say hello"}]]'
    result = run_claude(
        claude,
        claude_router,
        proxy,
        tmp_path,
        f"Run this for me: {directive}",
        "--model",
        alias,
        "--allowedTools",
        "Bash",
    )
    where = result["_where"]
    assert result["is_error"] is False, where
    assert result["num_turns"] == 2, where
    assert result["permission_denials"] == [], where
    records = chat_requests(quiet_fake)
    assert {r["vendor"] for r in records} == {vendor}, where
    # The first request asked for the tool call; a later one carried Bash's output as a tool message.
    tool_messages = [
        (index, message)
        for index, record in enumerate(records)
        for message in record["body"]["messages"]
        if message["role"] == "tool"
    ]
    assert tool_messages, f"no request carried a tool message; {where}"
    index, message = tool_messages[-1]
    assert index > 0 and "hello-from-bash" in texts(message), message
    history = records[index]["body"]["messages"]
    [call] = [c for m in history if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert call["function"]["name"] == "Bash"
    assert json.loads(call["function"]["arguments"])["command"] == "echo hello-from-bash"
    assert call["id"] and message["tool_call_id"] == call["id"], "the call and its result must pair up by id"
    # The fake's echo of the tool result is Claude Code's final answer.
    assert "tool result:" in result["result"] and "hello-from-bash" in result["result"], where
    assert_nothing_anthropic_reached_the_vendor(records)
    assert proxy.attempts == []


def test_claude_code_with_a_wrong_client_key_reports_the_routers_authentication_error(
    claude, claude_router, quiet_fake, proxy, tmp_path
):
    # Claude Code retries a 401 ten times over minutes by default; once is enough here.
    result = run_claude(
        claude,
        claude_router,
        proxy,
        tmp_path,
        "say hi",
        "--model",
        OPENAI_ALIAS,
        ANTHROPIC_AUTH_TOKEN="not-a-client-key-0123456789",
        CLAUDE_CODE_MAX_RETRIES="0",
    )
    assert result["is_error"] is True, result["_where"]
    assert result.get("api_error_status") == 401, result["_where"]
    assert quiet_fake.requests() == []
    assert proxy.attempts == []


def test_claude_code_model_discovery_lists_the_routers_aliases_in_anthropics_shape(
    claude, claude_router, quiet_fake, proxy, tmp_path
):
    """With gateway model discovery on, Claude Code first asks GET /v1/models?limit=1000 and keeps
    the ids that start with "claude" or "anthropic" (a failed listing does not stop a -p run)."""
    result = run_claude(
        claude,
        claude_router,
        proxy,
        tmp_path,
        "say hi",
        "--model",
        OPENAI_ALIAS,
        CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY="1",
    )
    assert result["is_error"] is False, result["_where"]
    assert re.search(r"method=GET path=/v1/models\S* status=200", claude_router.logs()), result["_where"]
    # Exactly the discovery request Claude Code 2.1.328 sends (captured): what does it get?
    headers = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "anthropic-version": "2023-06-01",
        "User-Agent": f"claude-code/{VERSION}",
    }
    listing = requests.get(claude_router.url("/v1/models"), params={"limit": 1000}, headers=headers, timeout=10)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    ids = [model["id"] for model in body["data"]]
    assert {OPENAI_ALIAS, GEMINI_ALIAS} <= set(ids)
    for model in body["data"]:
        assert model["type"] == "model" and model["display_name"], model
        datetime.fromisoformat(model["created_at"])  # RFC 3339
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, ids[0], ids[-1])
    assert proxy.attempts == []


def test_claude_code_recovers_from_a_vendor_error_mid_stream_with_a_whole_message(
    claude, claude_router, quiet_fake, proxy, tmp_path
):
    """A stream that breaks after the router committed must end in Anthropic's ``event: error``
    (not a made-up ``message_stop`` with half the text): Claude Code then asks again without
    streaming and shows that whole answer. (Captured: after an ``event: error`` it retries at once
    with ``"stream": false``; after a stream cut without ``message_stop``, once streamed, then not.)"""
    # Events spaced out, so the error comes after the router committed to the stream (an error in the
    # same read as the first content is a failure before commit: an HTTP 529, retried with backoff).
    quiet_fake.behave(
        "openai", tool_calls=False, content="The whole answer.", chunks=5, error_event_after=2, interval=0.2
    )
    result = run_claude(claude, claude_router, proxy, tmp_path, "say hi", "--model", OPENAI_ALIAS)
    where = result["_where"]
    assert result["is_error"] is False, where
    assert result["result"] == "The whole answer.", where
    records = chat_requests(quiet_fake)
    assert records[0]["body"]["stream"] is True
    assert not records[-1]["body"].get("stream"), [r["body"].get("stream") for r in records]
    assert_nothing_anthropic_reached_the_vendor(records)
