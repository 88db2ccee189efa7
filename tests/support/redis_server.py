"""A real, throwaway Redis server for tests: Debian's redis-server on a free loopback port.

Nothing is persisted (no RDB snapshots, no AOF), so a test run leaves no files behind.
``.ci/run`` installs redis-server; without it, tests that need Redis are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from tests.support.processes import free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)


class RedisServer:
    """``redis-server`` in a subprocess on a free port, in ``directory``; ``kill`` it to simulate an outage.

    ``url`` is what RATE_LIMIT_STORAGE takes (with the password, when one is required). Pass the
    ``port`` of a killed server to start it again where its clients look for it.
    """

    def __init__(self, directory: Path, password: str | None = None, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                *(["--requirepass", password] if password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, password=password, socket_timeout=1)
        wait_until(self._answers, timeout=10, message=f"redis-server on port {self.port}")

    def keys(self) -> list[str]:
        return sorted(key.decode() for key in self.client.keys("*"))

    def kill(self) -> None:
        """Stop the server at once, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.client.close()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False
