"""Real processes for integration tests, the demo and the benchmark: the fake vendor and the router.

The router runs exactly as in production, ``gunicorn -c gunicorn.conf.py wsgi:app`` with gevent
workers, on a free loopback port, configured only through environment variables and files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from tests.support.keys import DEFAULT_CREDENTIALS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Any, timeout: float, interval: float = 0.05, message: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout} s")
        time.sleep(interval)


def terminate(process: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM ``process``; SIGKILL it if it has not exited within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class FakeVendorProcess:
    """The fake vendor (tests/support/fake_vendor.py) in a subprocess, with its control API as methods."""

    def __init__(self, tls: tuple[str | Path, str | Path] | None = None, ca: str | Path | None = None) -> None:
        """``tls`` = (certificate chain, key) PEM files: serve HTTPS on ``https://localhost:P``.

        ``ca`` is the certificate authority that signed it (see ``tests.support.certs``); the control
        calls below trust it, and only it.
        """
        if (tls is None) != (ca is None):
            raise ValueError("tls and ca go together")
        command = [sys.executable, "-m", "tests.support.fake_vendor", "--port", "0"]
        if tls is not None:
            command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("FAKE_VENDOR_LISTENING"):
            self.process.kill()
            raise RuntimeError(f"fake vendor did not start: {line!r}")
        self.port = int(line.split()[1])
        # A certificate names a host; "localhost" is the one tests.support.certs puts in it.
        self.base = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        self._session = requests.Session()
        if ca is not None:
            self._session.verify = str(ca)
            # Otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment override verify.
            self._session.trust_env = False

    def url(self, vendor: str) -> str:
        """The base URL under which the fake plays ``vendor``."""
        return f"{self.base}/{vendor}"

    def behave(self, vendor: str, **behaviour: Any) -> None:
        """Make every later request to ``vendor`` behave so (see fake_vendor's docstring)."""
        self._session.put(f"{self.base}/_control/vendors/{vendor}", json=behaviour).raise_for_status()

    def reset(self) -> None:
        self._session.post(f"{self.base}/_control/reset").raise_for_status()

    def requests(self, vendor: str | None = None) -> list[dict[str, Any]]:
        """Requests the fake received (chat, embeddings, followed redirects), oldest first."""
        params = {"vendor": vendor} if vendor else {}
        return self._session.get(f"{self.base}/_control/requests", params=params).json()

    def streams(self, vendor: str | None = None) -> list[dict[str, Any]]:
        params = {"vendor": vendor} if vendor else {}
        return self._session.get(f"{self.base}/_control/streams", params=params).json()

    def stop(self) -> None:
        terminate(self.process)


def router_config(
    directory: Path,
    fake: FakeVendorProcess | None,
    models: Any = None,
    credentials: Any = None,
    vendors: Any = None,
) -> dict[str, str]:
    """Write config files into ``directory``; return the environment that points the router at them.

    By default: one OpenAI and one Gemini key and model, both vendors played by ``fake``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    models = (
        models
        if models is not None
        else [
            {"vendor": "openai", "model": "gpt-4o"},
            {"vendor": "gemini", "model": "gemini-2.0-flash"},
        ]
    )
    credentials = credentials if credentials is not None else DEFAULT_CREDENTIALS
    env = {
        "MODELS_FILE": str(directory / "models.json"),
        "CREDENTIALS_FILE": str(directory / "credentials.json"),
        "VENDORS_FILE": str(directory / "vendors.json"),
    }
    (directory / "models.json").write_text(json.dumps(models))
    if credentials != "absent":
        (directory / "credentials.json").write_text(json.dumps(credentials))
    if vendors is not None:
        (directory / "vendors.json").write_text(json.dumps(vendors))
    if fake is not None:
        env["OPENAI_BASE_URL"] = fake.url("openai")
        env["GEMINI_BASE_URL"] = fake.url("gemini") + "/v1beta/openai"
    return env


class RouterProcess:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` in a subprocess on a free port, its log in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, workers: int = 1, port: int | None = None) -> None:
        """``port``: listen there (e.g. where a restarted instance's proxy looks for it), else a free one."""
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {
            # Vendor keys from the developer's shell would become credentials when a test has no file.
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PROMETHEUS_", "ROUTER_", "RATE_", "BUDGET")) and "_API_KEY" not in k
            },
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self._log = open(log_path, "ab")  # noqa: SIM115 -- open for the process's whole life
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._healthy, timeout=20, message=f"router on port {self.port} healthy")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"router did not start; log:\n{self.logs()[-4000:]}") from None

    def url(self, path: str) -> str:
        return self.base + path

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10, graceful: bool = False) -> int | None:
        """Stop gunicorn (SIGKILL if it lingers past ``timeout``) and return its exit code.

        Quick shutdown (SIGQUIT) unless ``graceful``: a graceful SIGTERM waits for clients' idle
        keep-alive connections, seconds per router that tests need not spend.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGQUIT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"router exited with {self.process.returncode}; log:\n{self.logs()[-4000:]}")
        try:
            return requests.get(self.url("/health"), timeout=1).status_code == 200
        except requests.RequestException:
            return False


def node_tools_missing() -> str | None:
    """Why node/npm cannot be used here, or None. Under CI (``CI`` set) a test fails on this, else skips."""
    if shutil.which("node") and shutil.which("npm"):
        return None
    return "node and npm are not installed (.ci/run installs them: apt-get install nodejs npm)"


def npm_install(package: Path, timeout: float = 900) -> Path:
    """``npm ci`` the package.json + package-lock.json in ``package`` into a cache; return that directory.

    The cache (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``router-tests/<name>-<hash of the lock>``)
    is filled once per lock file and reused; nothing is installed into the repository. Only the
    npm registry is contacted, and only on the first use of a lock. Raises RuntimeError if npm fails.
    """
    lock = (package / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (package / "package.json").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "router-tests"
    home = cache / f"{package.name}-{digest}"
    done = home / ".installed"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{package.name}.lock", "w") as guard:  # one installer at a time
        fcntl.flock(guard, fcntl.LOCK_EX)
        if done.exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        for name in ("package.json", "package-lock.json"):
            shutil.copy(package / name, home / name)
        command = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            result = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"npm ci in {home} did not finish within {timeout:g} s") from None
        if result.returncode != 0:
            raise RuntimeError(f"npm ci in {home} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        return home
