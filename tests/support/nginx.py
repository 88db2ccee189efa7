"""A real nginx for tests: configs/nginx/router.conf with only its addresses and log path changed.

nginx runs in the foreground (``daemon off``) with every path it writes (pid, logs, temporary
files) in a temporary directory, so it needs no root and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.processes import ROOT, free_port, terminate, wait_until

CONFIG = ROOT / "configs" / "nginx" / "router.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def adapt(config: str, upstream_port: int | Sequence[int], listen_port: int, directory: Path) -> str:
    """The production config pointed at ``127.0.0.1:upstream_port``, listening on ``listen_port``.

    Several upstream ports: one ``server`` line each, as for several router instances. Each
    replaced line must be there exactly once: if the file changes shape, this fails instead of
    quietly testing something else.
    """
    ports = [upstream_port] if isinstance(upstream_port, int) else list(upstream_port)
    servers = "\n".join(rf"\g<1>server 127.0.0.1:{port};" for port in ports)
    replacements = [
        (r"^(\s*)server router:8082;$", servers),
        (r"^(\s*)listen 80;$", rf"\g<1>listen 127.0.0.1:{listen_port};"),
        (r"^(\s*)access_log /var/log/nginx/access\.log", rf"\g<1>access_log {directory}/access.log"),
    ]
    for pattern, replacement in replacements:
        config, count = re.subn(pattern, replacement, config, flags=re.MULTILINE)
        assert count == 1, f"configs/nginx/router.conf: expected one line matching {pattern!r}, found {count}"
    return config


class Nginx:
    """nginx with the router's config in front of ``upstream_port`` (one or several), on a free loopback port."""

    def __init__(self, directory: Path, upstream_port: int | Sequence[int], workers: int = 1) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (directory / "router.conf").write_text(adapt(CONFIG.read_text(), upstream_port, self.port, directory))
        # As root, nginx would run its workers as "nobody", who cannot enter pytest's private
        # temporary directories; in a test the workers may stay root.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"""{user}daemon off;
worker_processes {workers};
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/router.conf;
}}
"""
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start; error log:\n{self.error_log()}")
            time.sleep(0.05)

    def url(self, path: str) -> str:
        return self.base + path

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_entries(self, count: int = 1) -> list[dict]:
        """The access log's JSON lines, once there are ``count``: nginx writes a line after answering."""
        path = self.directory / "access.log"

        def entries() -> list[dict]:
            lines = path.read_text().splitlines() if path.exists() else []
            return [json.loads(line) for line in lines] if len(lines) >= count else []

        return wait_until(entries, 10, message=f"{count} nginx access log lines")

    def stop(self) -> None:
        """Fast shutdown (SIGTERM): nginx closes its kept-alive connections to the router too."""
        terminate(self.process, grace=10)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False
