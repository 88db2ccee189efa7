"""Reading the router's /metrics the way Prometheus does, gunicorn's workers the way the kernel does,
and a real Prometheus server (Debian's ``prometheus`` package) scraping a router.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import free_port, terminate, wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
# The scrape job the rules' RouterDown / RouterNotScraped alerts name.
JOB = "generative-api-router"

# One sample: its name (with _total, _count, _bucket ... suffix) and its labels.
Series = tuple[str, frozenset[tuple[str, str]]]


class Samples(dict[Series, float]):
    """Every sample of one scrape, keyed by name and labels."""

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and wanted <= ls)

    def label_values(self, label: str, prefix: str = "") -> set[str]:
        """Every value ``label`` takes in samples whose name starts with ``prefix``."""
        return {value for (name, ls) in self if name.startswith(prefix) for key, value in ls if key == label}


def parse(text: str) -> Samples:
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(base_url: str) -> Samples:
    """GET /metrics on a fresh connection, so gunicorn may hand it to any worker."""
    response = requests.get(f"{base_url}/metrics", headers={"Connection": "close"}, timeout=10)
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def collect_files(directory: Path, pid: int) -> Samples:
    """What the metric files one worker process wrote say, read with prometheus_client's own collector."""
    with tempfile.TemporaryDirectory() as only_this_pid:
        for path in directory.glob(f"*_{pid}.db"):
            shutil.copy(path, only_this_pid)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=only_this_pid)
        samples = Samples()
        for family in registry.collect():
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


def pids_with_files(directory: Path) -> set[int]:
    """The processes that wrote metric files into a multiprocess directory."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("*.db")}


def children(parent: int) -> set[int]:
    """Live child processes of ``parent`` (gunicorn's workers, for the master), from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that closes the command name: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.add(int(entry))
    return found


class PrometheusServer:
    """``prometheus`` in a subprocess on a free loopback port, scraping ``targets`` every second
    and evaluating ``rule_files`` every second, with its data in ``directory``.

    Ready once every target has been scraped: from then on a scrape comes every second.
    """

    def __init__(self, directory: Path, targets: list[str], rule_files: list[Path]) -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(directory / "prometheus.log", "ab")  # noqa: SIM115 -- open for the process's whole life
        self.log_path = directory / "prometheus.log"
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, timeout=30, interval=0.2, message=f"prometheus on port {self.port} ready")
            # Prometheus applies new targets up to 5 s after start; from the first scrape on, they come every second.
            wait_until(
                lambda: len(self.query(f'up{{job="{JOB}"}}')) == len(targets),
                timeout=30,
                interval=0.2,
                message="prometheus scraped every target once",
            )
        except (TimeoutError, RuntimeError):
            self.stop()
            raise

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query at the current time (raises on a PromQL error)."""
        response = requests.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of the series ``match`` selects (what Grafana's ``label_values`` reads)."""
        response = requests.get(f"{self.base}/api/v1/series", params={"match[]": match}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"series {match!r} failed: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def rule_groups(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.base}/api/v1/rules", timeout=10)
        response.raise_for_status()
        return response.json()["data"]["groups"]

    def wait_for_data_after(self, moment: float, timeout: float = 20) -> None:
        """Wait until every target was scraped and every rule group evaluated after ``moment`` (time.time())."""

        def caught_up() -> bool:
            scraped = [float(sample["value"][1]) for sample in self.query(f'timestamp(up{{job="{JOB}"}})')]
            evaluated = [_unix_time(group["lastEvaluation"]) for group in self.rule_groups()]
            return bool(scraped) and min(scraped + evaluated) > moment

        wait_until(caught_up, timeout=timeout, interval=0.2, message="prometheus scraped and evaluated")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process, grace=10)
        self._log.close()

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}; log:\n{self.logs()[-4000:]}")
        try:
            return requests.get(f"{self.base}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def _unix_time(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times carry nanoseconds; Python reads at most microseconds."""
    match = re.fullmatch(r"([^.]+?)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {rfc3339!r}")
    whole, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(whole + (fraction or "")[:7] + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp()
