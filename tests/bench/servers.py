"""The benchmark's vendor process (tests/bench/vendor.py), started and driven from the benchmark."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import requests

from tests.support.processes import ROOT, terminate

__all__ = ["HOST", "LeanVendor"]

HOST = "127.0.0.1"


class LeanVendor:
    """tests/bench/vendor.py in a subprocess, with the part of processes.FakeVendorProcess's face the bench uses."""

    def __init__(
        self, pieces: int | None = None, interval: float = 0.0, log_calls: bool = False, prefix_cache: int | None = None
    ) -> None:
        command = [sys.executable, "-m", "tests.bench.vendor", "--port", "0"]
        if pieces is not None:
            command += [f"--pieces={pieces}", f"--interval={interval}"]
        if log_calls:
            command.append("--log-calls")
        if prefix_cache is not None:
            command.append(f"--prefix-cache={prefix_cache}")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("BENCH_VENDOR_LISTENING"):
            self.process.kill()
            raise RuntimeError(f"the bench vendor did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base = f"http://{HOST}:{self.port}"

    def url(self, vendor: str) -> str:
        return f"{self.base}/{vendor}"

    def fault(self, vendor: str, mode: str) -> None:
        """Switch ``vendor``'s fault mode (ok, error, stall, drop) from now on."""
        change = {"vendor": vendor, "mode": mode}
        requests.post(f"{self.base}/_control/fault", json=change, timeout=5).raise_for_status()

    def calls(self) -> list[list[Any]]:
        """Every chat call received: [monotonic time, vendor, stream, mode] (needs ``log_calls``)."""
        response = requests.get(f"{self.base}/_control/log", timeout=30)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        terminate(self.process)
