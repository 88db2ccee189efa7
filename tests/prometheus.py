"""Reading the router's /metrics the way Prometheus does, and gunicorn's workers the way the kernel does."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

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
