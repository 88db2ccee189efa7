"""Non-stream load: ``wrk`` when installed (a Lua script POSTs the JSON body), else tests/bench/loadgen.py.

Both return the same shape: requests, duration_s, rps, errors by kind, latency_ms (p50, p90, p99,
max) and loadgen_cpu_share (the generator's CPU seconds per second of load; near 1.0 means the
generator set the pace).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT

__all__ = ["LoadGenerator", "pick_generator"]

# wrk's done() hook prints one line with the whole summary; percentiles come from its full
# latency histogram (microseconds), not from the rounded text report.
_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}wrk.body = [{level}[{body}]{level}]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class LoadGenerator:
    """Runs closed-loop POST load against one URL with a given body."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def describe(self) -> str:
        raise NotImplementedError

    def run(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        concurrency: int,
        duration: float,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run the load for ``duration`` seconds and return its figures."""
        return self.finish(*self.start(host, port, path, body, concurrency, duration, headers))

    def start(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        concurrency: int,
        duration: float,
        headers: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen, Any]:
        """Start a run in the background; ``finish`` collects it (the soak runs load beside streams)."""
        raise NotImplementedError

    def finish(self, process: subprocess.Popen, token: Any) -> dict[str, Any]:
        raise NotImplementedError


class Wrk(LoadGenerator):
    """wrk with one thread (-t1), as the issue's peer measurements were taken."""

    def __init__(self, workdir: Path, binary: str) -> None:
        super().__init__(workdir)
        self.binary = binary
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        self.version = (version.stdout + version.stderr).split("Copyright")[0].strip() or "wrk"

    def describe(self) -> str:
        return f"{self.version} ({self.binary}), -t1"

    def _script(self, body: bytes, headers: dict[str, str]) -> Path:
        text = body.decode()
        level = "="
        while f"]{level}]" in text:  # a Lua long bracket the body cannot close
            level += "="
        lines = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
        path = self.workdir / f"wrk-{abs(hash((body, tuple(headers.items()))))}.lua"
        path.write_text(_WRK_SCRIPT.format(level=level, body=text, headers=lines))
        return path

    def start(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        concurrency: int,
        duration: float,
        headers: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen, Any]:
        command = [
            self.binary,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(round(duration), 1)}s",
            "--timeout",
            "10s",
            "-s",
            str(self._script(body, headers or {})),
            f"http://{host}:{port}{path}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return process, _children_cpu()

    def finish(self, process: subprocess.Popen, token: Any) -> dict[str, Any]:
        output, _ = process.communicate()
        cpu = _children_cpu() - token
        match = re.search(r"^BENCH_JSON (.*)$", output, re.MULTILINE)
        if process.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed (exit {process.returncode}):\n{output[-2000:]}")
        raw = json.loads(match.group(1))
        seconds = raw["duration_us"] / 1e6
        errors = {kind: raw[kind] for kind in ("connect", "read", "write", "status", "timeout") if raw[kind]}
        return {
            "requests": raw["requests"],
            "duration_s": round(seconds, 3),
            "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
            "errors": errors,
            "latency_ms": {name: round(raw[name] / 1000, 3) for name in ("p50", "p90", "p99", "max")},
            "loadgen_cpu_share": round(cpu / seconds, 3) if seconds else None,
        }


class GeventLoad(LoadGenerator):
    """tests/bench/loadgen.py in its own process."""

    def __init__(self, workdir: Path, why: str) -> None:
        super().__init__(workdir)
        self.why = why

    def describe(self) -> str:
        return f"gevent load generator (tests/bench/loadgen.py; {self.why})"

    def start(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        concurrency: int,
        duration: float,
        headers: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen, Any]:
        body_file = tempfile.NamedTemporaryFile(dir=self.workdir, suffix=".json", delete=False)  # noqa: SIM115
        body_file.write(body)
        body_file.close()
        out = Path(body_file.name).with_suffix(".out")
        command = [
            sys.executable,
            "-m",
            "tests.bench.loadgen",
            f"--host={host}",
            f"--port={port}",
            f"--path={path}",
            f"--body-file={body_file.name}",
            f"--concurrency={concurrency}",
            f"--duration={duration}",
            f"--out={out}",
            *(f"--header={name}:{value}" for name, value in (headers or {}).items()),
        ]
        return subprocess.Popen(command, cwd=ROOT), out

    def finish(self, process: subprocess.Popen, token: Any) -> dict[str, Any]:
        if process.wait() != 0:
            raise RuntimeError(f"the gevent load generator failed (exit {process.returncode})")
        return json.loads(Path(token).read_text())


def pick_generator(choice: str, workdir: Path) -> LoadGenerator:
    """``auto``: wrk if it is on PATH, else the gevent generator; ``wrk`` insists on wrk."""
    binary = shutil.which("wrk")
    if choice == "wrk" and not binary:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install wrk); use --loadgen gevent")
    if choice != "gevent" and binary:
        return Wrk(workdir, binary)
    why = "as asked" if choice == "gevent" else "wrk not found: `apt-get install wrk` for more headroom"
    return GeventLoad(workdir, why)
