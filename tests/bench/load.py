"""Non-stream load: ApacheBench (``ab -k``) when installed, else ``wrk`` (a Lua script POSTs the JSON
body), else tests/bench/loadgen.py.

All return the same shape: requests, duration_s, rps, errors by kind, latency_ms (mean, p50, p90,
p99, max) and loadgen_cpu_share (the generator's CPU seconds per second of load; near 1.0 means the
generator set the pace). ``little`` checks a result against Little's law: in a closed loop of C
connections, mean latency x calls/s = C. A generator whose figures break it (wrk's did here:
a mean of 48 ms at 1,510 calls/s over 16 connections) measures something else than what it
reports, and its tail figures cannot be trusted; ab's agree with it, so ab is the default.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT

__all__ = ["LITTLE_TOLERANCE", "LoadGenerator", "little", "pick_generator"]

# How far mean latency x calls/s may be from the concurrency before a row's figures are flagged.
LITTLE_TOLERANCE = 0.10


def little(result: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """Little's law for a closed-loop row: mean latency x calls/s over the concurrency, ~1.0 when
    the generator's figures are consistent (``ok``: within LITTLE_TOLERANCE)."""
    mean = result["latency_ms"].get("mean")
    if mean is None or not result["rps"]:
        return {"ratio": None, "ok": None}
    ratio = mean / 1000 * result["rps"] / concurrency
    return {"ratio": round(ratio, 3), "ok": abs(ratio - 1) <= LITTLE_TOLERANCE}


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
    '"status": %d, "timeout": %d, "mean": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
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
        **options: Any,
    ) -> dict[str, Any]:
        """Run the load for ``duration`` seconds and return its figures."""
        return self.finish(*self.start(host, port, path, body, concurrency, duration, headers, **options))

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

    def _body_file(self, body: bytes) -> Path:
        """``body`` in a new file of the work directory, for a generator that reads it from disk."""
        with tempfile.NamedTemporaryFile(dir=self.workdir, suffix=".json", delete=False) as file:
            file.write(body)
        return Path(file.name)


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
            "latency_ms": {name: round(raw[name] / 1000, 3) for name in ("mean", "p50", "p90", "p99", "max")},
            "loadgen_cpu_share": round(cpu / seconds, 3) if seconds else None,
        }


class ApacheBench(LoadGenerator):
    """ApacheBench (apache2-utils): ``ab -k``, C keep-alive connections, for a fixed time.

    Its percentiles come from every request's time (``-e``, a CSV of the percentiles in ms) and its
    mean is the one Little's law checks. It speaks HTTP/1.0 with ``Connection: Keep-Alive``, and
    reconnects when the server closes a connection (counted in ``reconnects``).
    """

    def __init__(self, workdir: Path, binary: str, keepalive: bool = True) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.keepalive = keepalive
        version = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
        self.version = version.stdout.splitlines()[0].strip() if version.stdout else "ab"

    def describe(self) -> str:
        return f"{self.version} ({self.binary}), {'-k' if self.keepalive else 'a new connection per call'}"

    def start(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        concurrency: int,
        duration: float,
        headers: dict[str, str] | None = None,
        requests: int | None = None,
    ) -> tuple[subprocess.Popen, Any]:
        body_file = self._body_file(body)
        csv = body_file.with_suffix(".csv")
        tsv = body_file.with_suffix(".tsv")
        # -t bounds the time; -n (given after it) lifts ab's default cap of 50,000 calls.
        limit = ["-n", str(requests)] if requests else ["-t", str(max(round(duration), 1)), "-n", "100000000"]
        command = [
            self.binary,
            *(["-k"] if self.keepalive else []),
            "-q",
            "-s",
            "10",
            "-c",
            str(concurrency),
            *limit,
            "-e",
            str(csv),
            "-g",
            str(tsv),
            "-p",
            str(body_file),
            "-T",
            "application/json",
            *(item for name, value in (headers or {}).items() for item in ("-H", f"{name}: {value}")),
            f"http://{host}:{port}{path}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return process, (_children_cpu(), csv, tsv, body_file)

    def finish(self, process: subprocess.Popen, token: Any) -> dict[str, Any]:
        output, _ = process.communicate()
        cpu_before, csv, tsv, body_file = token
        cpu = _children_cpu() - cpu_before
        os.unlink(body_file)

        def number(pattern: str) -> float:
            match = re.search(pattern, output)
            if match is None:
                raise RuntimeError(f"ab failed (exit {process.returncode}):\n{output[-2000:]}")
            return float(match.group(1))

        done = int(number(r"Complete requests:\s+(\d+)"))
        seconds = number(r"Time taken for tests:\s+([\d.]+) seconds")
        percentiles = {}
        for line in csv.read_text().splitlines()[1:]:
            share, ms = line.split(",")
            percentiles[int(float(share))] = float(ms)
        errors = {}
        failed = int(number(r"Failed requests:\s+(\d+)"))
        if failed:
            errors["failed"] = failed
        if match := re.search(r"Non-2xx responses:\s+(\d+)", output):
            errors["status"] = int(match.group(1))
        keepalive = re.search(r"Keep-Alive requests:\s+(\d+)", output)
        return {
            "requests": done,
            "duration_s": round(seconds, 3),
            "rps": round(done / seconds, 1) if seconds else 0.0,
            "errors": errors,
            "latency_ms": {
                "mean": _ab_mean(tsv, percentiles),
                **{name: percentiles.get(p) for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
            },
            # Calls that did not reuse a connection: the server closed it (e.g. to rebalance).
            "reconnects": done - int(keepalive.group(1)) if keepalive and self.keepalive else None,
            "loadgen_cpu_share": round(cpu / seconds, 3) if seconds else None,
        }


def _ab_mean(tsv: Path, percentiles: dict[int, float]) -> float | None:
    """The mean latency of ab's calls, measured (not ab's "Time per request", which it derives from
    calls/s and the concurrency, i.e. from Little's law itself).

    From ``-g``: every call's total time, which ab truncates to whole milliseconds, so 0.5 ms is
    added back (unbiased once the times spread over several milliseconds: used from 5 ms up). Below,
    the mean of the percentiles 0 to 99 from ``-e`` (microsecond precision; such tight
    distributions have no tail that the missing last 1% would carry).
    """
    try:
        lines = tsv.read_text().splitlines()[1:]
        tsv.unlink()
    except OSError:
        lines = []
    times = [int(line.split("\t")[4]) for line in lines if line.count("\t") >= 5]
    if times and sum(times) / len(times) + 0.5 >= 5:
        return round(sum(times) / len(times) + 0.5, 3)
    if len(percentiles) < 100:
        return None
    return round(sum(percentiles[p] for p in range(100)) / 100, 3)


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
        body_file = self._body_file(body)
        out = body_file.with_suffix(".out")
        command = [
            sys.executable,
            "-m",
            "tests.bench.loadgen",
            f"--host={host}",
            f"--port={port}",
            f"--path={path}",
            f"--body-file={body_file}",
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
    """``auto``: ab if it is on PATH, else wrk, else the gevent generator; ``ab``, ``wrk`` insist."""
    ab, wrk = shutil.which("ab"), shutil.which("wrk")
    if choice == "ab" and not ab:
        raise SystemExit("ab is not installed (Debian/Ubuntu: apt-get install apache2-utils)")
    if choice == "wrk" and not wrk:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install wrk); use --loadgen gevent")
    if choice in ("auto", "ab") and ab:
        return ApacheBench(workdir, ab)
    if choice in ("auto", "wrk") and wrk:
        return Wrk(workdir, wrk)
    why = "as asked" if choice == "gevent" else "ab not found: `apt-get install apache2-utils`"
    return GeventLoad(workdir, why)
