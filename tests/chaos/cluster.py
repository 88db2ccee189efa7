"""The deployment under test: a fake vendor playing three vendors, Redis, two routers, nginx.

Everything runs on loopback in one work directory, each piece as in production: the router as
``gunicorn -c gunicorn.conf.py wsgi:app`` (2 gevent workers per instance) configured by files and
environment only, nginx with configs/nginx/router.conf (its ``upstream`` holding both instances),
``redis-server`` for rate limits and cooldowns. ``Cluster.stop`` ends every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.nginx import Nginx
from tests.support.processes import FakeVendorProcess, RouterProcess, free_port
from tests.support.redis_server import RedisServer

__all__ = [
    "CLIENT_KEYS",
    "FLAKY",
    "INSTANCES",
    "REVOCABLE",
    "STEADY",
    "VENDOR_KEYS",
    "Cluster",
    "Instance",
    "models",
]

# The three vendors: two steady ones, and one that flaps on a schedule (tests/chaos/faults.py).
STEADY = ("alpha", "beta")
FLAKY = "flaky"
VENDORS = (*STEADY, FLAKY)
# alpha has two keys: one of them is revoked during the run, the router must use the other.
VENDOR_KEYS = {
    "alpha": ["sk-chaos-alpha-one-0123456789", "sk-chaos-alpha-two-0123456789"],
    "beta": ["sk-chaos-beta-0123456789"],
    "flaky": ["sk-chaos-flaky-0123456789"],
}
REVOCABLE = "alpha"
# Client keys (ROUTER_API_KEYS): rate limits are per client.
CLIENT_KEYS = {"app": "ck-chaos-app-0123456789", "agent": "ck-chaos-agent-0123456789"}
INSTANCES = ("a", "b")

# The router's settings for the run (besides ports, files and storage): see the README's "Chaos run".
ROUTER_ENV = {
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "json",
    # High enough that no client is limited: the limiter still counts every call in Redis.
    "RATE_LIMIT": "100000/minute",
    "TRUSTED_PROXIES": "1",
    # A stalled vendor is given up after 5 s of silence (the vendors here answer in milliseconds and
    # stream an event every 50 ms, or a comment every 300 ms while pausing; 5 s, not less, so that a
    # busy shared machine stalling a process for a second or two is not taken for a vendor stall).
    "UPSTREAM_READ_TIMEOUT": "5",
    # Short cooldowns, so the flapping vendor is tried again within each of its healthy phases.
    "COOLDOWN_SECONDS": "5",
    # A drain waits for running streams; the longest here (a slow reader) takes a few seconds.
    "GRACEFUL_TIMEOUT": "30",
    # As docker-compose.yml behind nginx: nginx (keepalive_timeout 4s) closes idle connections, not
    # gunicorn, even across a stall of the shared machine (one of 4.1 s broke a 1 s margin).
    "KEEPALIVE": "30",
}


def models(variant: int = 0) -> list[dict[str, Any]]:
    """The models file; ``variant`` changes weights (a changed config for SIGHUP)."""
    return [
        {"vendor": "alpha", "model": "model-a", "weight": 1 + variant % 2},
        {"vendor": "beta", "model": "model-b", "weight": 1 + (variant + 1) % 2},
        {"vendor": FLAKY, "model": "model-f"},
        {"vendor": "alpha", "model": "embed-a", "type": "embedding"},
        {"vendor": FLAKY, "model": "embed-f", "type": "embedding"},
    ]


def credentials() -> list[dict[str, str]]:
    return [
        {"platform": vendor, "type": "api-key", "value": key} for vendor, keys in VENDOR_KEYS.items() for key in keys
    ]


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` the way a config deploy should: a whole new file, renamed into place."""
    part = path.with_suffix(path.suffix + ".part")
    part.write_text(text)
    os.replace(part, path)


class Instance:
    """One router instance on a fixed port (a restart comes back where nginx looks for it)."""

    def __init__(self, name: str, port: int, env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.directory = directory
        self.generation = 0
        self.router: RouterProcess | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_pid(self) -> int | None:
        router = self.router
        return router.process.pid if router is not None and router.process.poll() is None else None

    def start(self) -> None:
        self.generation += 1
        metrics = self.directory / f"metrics-{self.generation}"
        metrics.mkdir(parents=True)
        env = {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        self.router = RouterProcess(env, self.log_path, workers=2, port=self.port)

    @property
    def log_path(self) -> Path:
        return self.directory / "router.log"

    def signal(self, signum: int) -> None:
        if self.router is not None:
            self.router.signal(signum)

    def drain(self, timeout: float) -> tuple[float, int | None]:
        """SIGTERM (gunicorn's graceful stop: running requests finish); (seconds it took, exit code)."""
        started = time.monotonic()
        code = self.router.stop(timeout=timeout, graceful=True) if self.router is not None else None
        return time.monotonic() - started, code

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop(timeout=10)


class Cluster:
    """Start with ``Cluster(workdir)``; ``stop()`` ends it all (also after a failed start)."""

    def __init__(self, workdir: Path, flap_behaviour: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config_dir = workdir / "config"
        self.config_dir.mkdir(parents=True)
        self.fake: FakeVendorProcess | None = None
        self.redis: RedisServer | None = None
        self.nginx: Nginx | None = None
        self.instances: list[Instance] = []
        self.steady_behaviour = flap_behaviour
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.fake = FakeVendorProcess()
        for vendor in VENDORS:
            self.fake.behave(vendor, **self.steady_behaviour)
        self.redis = RedisServer(self.workdir / "redis")
        self.models_file = self.config_dir / "models.json"
        self.write_models(models(0))
        (self.config_dir / "credentials.json").write_text(json.dumps(credentials()))
        (self.config_dir / "vendors.json").write_text(
            json.dumps([{"name": vendor, "base_url": self.fake.url(vendor)} for vendor in VENDORS])
        )
        env = {
            **ROUTER_ENV,
            "MODELS_FILE": str(self.models_file),
            "CREDENTIALS_FILE": str(self.config_dir / "credentials.json"),
            "VENDORS_FILE": str(self.config_dir / "vendors.json"),
            "RATE_LIMIT_STORAGE": self.redis.url,
            "COOLDOWN_STORAGE": self.redis.url,
            "ROUTER_API_KEYS": ",".join(f"{name}={key}" for name, key in CLIENT_KEYS.items()),
        }
        for name in INSTANCES:
            instance = Instance(name, free_port(), env, self.workdir / f"router-{name}")
            self.instances.append(instance)
            instance.start()
        self.nginx = Nginx(self.workdir / "nginx", [instance.port for instance in self.instances])

    def write_models(self, document: Any) -> None:
        text = document if isinstance(document, str) else json.dumps(document, indent=1)
        write_atomically(self.models_file, text)

    def sighup_all(self) -> None:
        for instance in self.instances:
            instance.signal(signal.SIGHUP)

    def restart_redis(self, down_seconds: float) -> None:
        """Kill Redis (as a crash would), leave it down ``down_seconds``, start it on the same port."""
        assert self.redis is not None
        port = self.redis.port
        self.redis.kill()
        time.sleep(down_seconds)
        self.redis = RedisServer(self.workdir / "redis", port=port)

    def pids(self) -> list[int]:
        """Every process of the cluster that is still running (for the final check)."""
        found = []
        for proc in (self.fake, self.redis, self.nginx):
            process = getattr(proc, "process", None)
            if process is not None and process.poll() is None:
                found.append(process.pid)
        found += [i.master_pid for i in self.instances if i.master_pid is not None]
        return found

    def stop(self) -> None:
        for instance in self.instances:
            _quietly(instance.stop)
        for part in (self.nginx, self.fake):
            if part is not None:
                _quietly(part.stop)
        if self.redis is not None:
            _quietly(self.redis.kill)


def _quietly(stop: Any) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
        stop()
