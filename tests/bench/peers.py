"""Other gateways measured in the same run (``--peers portkey,litellm``): installed into a cache, started, stopped.

Nothing of theirs is committed: each is installed on first use into ``--peer-cache``
(``~/.cache/router-bench`` by default) and reused from there.

- ``portkey``: the Portkey AI gateway (Node.js), ``@portkey-ai/gateway`` 1.15.2 from npm, with
  ``@hono/node-server`` held at 1.13.5 by an npm ``overrides`` entry (with the newer one that
  1.15.2 pulls in, its answers fail). Started with ``node build/start-server.js --port=P
  --headless``: one Node process, as it ships. Each request names the vendor in headers:
  ``x-portkey-provider: openai`` and ``x-portkey-custom-host: <the bench vendor's base URL>``
  (Portkey appends ``/chat/completions``; loopback hosts are trusted by default).
- ``litellm``: the LiteLLM proxy, ``litellm[proxy]`` from PyPI in its own virtualenv, installed
  within ``--peer-install-timeout`` seconds or skipped, saying why. Started as ``litellm
  --config C --num_workers W`` with W the router's worker count, one model ``any-model`` ->
  ``openai/gpt-4o`` at the bench vendor, and a master key (it refuses to start without one);
  its network look-ups at start (model cost map, telemetry) are switched off.

Both drop request fields they do not know (the bench's ``x_fake``), so the bench vendor is
started with the stream shape as its default (``--pieces``, ``--interval``), which every path
then gets alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.processes import free_port

__all__ = ["PEERS", "Peer", "PeerSkipped", "default_cache", "start_peer"]

PEERS = ("portkey", "litellm")
PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER = "1.13.5"
LITELLM_REQUIREMENT = "litellm[proxy]==1.108.7"
LITELLM_MASTER_KEY = "sk-bench-litellm-0123456789abcdef"


class PeerSkipped(Exception):
    """A peer that cannot be installed or started here; the message says why."""


@dataclass
class Peer:
    """A running peer gateway: where to send requests, with which headers, and its process."""

    name: str
    version: str
    port: int
    headers: dict[str, str]
    process: subprocess.Popen
    command: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stop the peer and every process it started (it runs in its own process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        # Workers that outlived their parent share its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "router-bench"


def start_peer(
    name: str, vendor_base: str, vendor_key: str, workers: int, cache: Path, install_timeout: float, log: Path
) -> Peer:
    """Install (if needed) and start peer ``name`` in front of the vendor at ``vendor_base``; raises PeerSkipped."""
    cache.mkdir(parents=True, exist_ok=True)
    if name == "portkey":
        return _portkey(vendor_base, vendor_key, cache / "portkey", install_timeout, log)
    if name == "litellm":
        return _litellm(vendor_base, vendor_key, workers, cache / "litellm", install_timeout, log)
    raise PeerSkipped(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def _run(command: list[str], cwd: Path, timeout: float, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PeerSkipped(f"{what} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise PeerSkipped(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-800:]}")


def _spawn(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        # Its own process group, so stop() reaches the workers it forks.
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_answering(peer: Peer, path: str, timeout: float, log: Path) -> None:
    """Until the peer answers a chat call 200 (its first calls may fail while it starts)."""
    url = f"http://127.0.0.1:{peer.port}{path}"
    body = {"model": "any-model", "messages": [{"role": "user", "content": "ready?"}]}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            break
        try:
            response = requests.post(url, json=body, headers=peer.headers, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    peer.stop()
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise PeerSkipped(f"{peer.name} did not answer within {timeout:g} s (last: {last}); log tail:\n{tail}")


def _portkey(vendor_base: str, vendor_key: str, home: Path, install_timeout: float, log: Path) -> Peer:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise PeerSkipped("node and npm are needed for Portkey (Debian: apt-get install nodejs npm)")
    package = home / "node_modules" / "@portkey-ai" / "gateway"
    if (
        _installed_version(package) != PORTKEY_VERSION
        or _installed_version(home / "node_modules" / "@hono" / "node-server") != HONO_NODE_SERVER
    ):
        home.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": "router-bench-portkey",
            "private": True,
            "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
            # 1.15.2 pulls a newer @hono/node-server whose responses break the gateway's answers.
            "overrides": {"@hono/node-server": HONO_NODE_SERVER},
        }
        (home / "package.json").write_text(json.dumps(manifest, indent=2))
        _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], home, install_timeout, "npm install")
    port = free_port()
    command = [node, str(package / "build" / "start-server.js"), f"--port={port}", "--headless"]
    process = _spawn(command, home, dict(os.environ), log)
    peer = Peer(
        name="portkey",
        version=f"@portkey-ai/gateway {PORTKEY_VERSION} (node {_node_version(node)})",
        port=port,
        headers={
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": vendor_base,
            "Authorization": f"Bearer {vendor_key}",
        },
        process=process,
        command="node build/start-server.js --headless (one process)",
    )
    _wait_answering(peer, "/v1/chat/completions", 30, log)
    return peer


def _litellm(vendor_base: str, vendor_key: str, workers: int, home: Path, install_timeout: float, log: Path) -> Peer:
    venv = home / "venv"
    binary = venv / "bin" / "litellm"
    if not binary.exists() or _pip_version(venv, "litellm") != LITELLM_REQUIREMENT.split("==")[1]:
        home.mkdir(parents=True, exist_ok=True)
        if not (venv / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", str(venv)], home, 120, "creating the LiteLLM virtualenv")
        started = time.monotonic()
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, LITELLM_REQUIREMENT], home, install_timeout, f"pip install {LITELLM_REQUIREMENT}")
        print(f"installed {LITELLM_REQUIREMENT} in {time.monotonic() - started:.0f} s", flush=True)
    port = free_port()
    config = home / "config.yaml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "any-model",
                        "litellm_params": {"model": "openai/gpt-4o", "api_base": vendor_base, "api_key": vendor_key},
                    }
                ],
                "general_settings": {"master_key": LITELLM_MASTER_KEY},
            },
            indent=2,
        )
    )
    env = {
        **os.environ,
        # No network at start: the packaged model cost map, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    command = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", str(workers)]
    process = _spawn(command, home, env, log)
    peer = Peer(
        name="litellm",
        version=f"litellm {_pip_version(venv, 'litellm')}",
        port=port,
        headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        process=process,
        command=f"litellm --config C --num_workers {workers}",
    )
    _wait_answering(peer, "/v1/chat/completions", 120, log)
    return peer


def _installed_version(package: Path) -> str | None:
    try:
        return json.loads((package / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return None


def _node_version(node: str) -> str:
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _pip_version(venv: Path, name: str) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    code = f"from importlib import metadata; print(metadata.version({name!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None
