"""Reading a process tree's memory, CPU time and open descriptors from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Sampler", "TreeSample", "cpu_between", "cpu_seconds", "loadavg", "sample_tree", "tree_pids"]

_TICK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg prints them."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and its direct children (the gunicorn master and its workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # After the name: state, ppid, ...
            if int(_stat_fields(int(entry))[1]) == root:
                children.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # the process exited while we looked
    return [root, *sorted(children)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = _stat_fields(pid)
    # utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / _TICK


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB; PSS shares pages common to several processes between them."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        return rss, pss
    except FileNotFoundError:  # kernels before 4.14: RSS only
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return rss, rss


@dataclass
class TreeSample:
    """One look at a process tree: per-process RSS, PSS, CPU seconds and open descriptors."""

    at: float
    rss_kb: dict[int, int] = field(default_factory=dict)
    pss_kb: dict[int, int] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    fds: dict[int, int] = field(default_factory=dict)

    @property
    def rss_mb(self) -> float:
        return sum(self.rss_kb.values()) / 1024

    @property
    def pss_mb(self) -> float:
        return sum(self.pss_kb.values()) / 1024

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())


def sample_tree(root: int, fds: bool = False) -> TreeSample:
    """Memory and CPU of ``root`` and its children now; processes that vanish meanwhile are skipped."""
    sample = TreeSample(at=time.monotonic())
    for pid in tree_pids(root):
        try:
            sample.rss_kb[pid], sample.pss_kb[pid] = _memory_kb(pid)
            sample.cpu[pid] = cpu_seconds(pid)
            if fds:
                sample.fds[pid] = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError, IndexError):
            for table in (sample.rss_kb, sample.pss_kb, sample.cpu, sample.fds):
                table.pop(pid, None)
    return sample


def cpu_between(before: TreeSample, after: TreeSample) -> float:
    """CPU seconds the tree used between two samples, counting only processes alive at both.

    A worker that was replaced in between is reported by the caller (its pid is missing), not
    silently mixed in: its CPU would be lost or double counted either way.
    """
    return sum(after.cpu[pid] - before.cpu[pid] for pid in after.cpu if pid in before.cpu)


class Sampler:
    """Samples a process tree in a background thread while a measurement runs; keeps the peaks."""

    def __init__(self, root: int, every: float = 0.5, fds: bool = False) -> None:
        self._root = root
        self._every = every
        self._fds = fds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[TreeSample] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append(sample_tree(self._root, self._fds))
            if self._stop.wait(self._every):
                return

    @property
    def peak_rss_mb(self) -> float:
        return max((s.rss_mb for s in self.samples), default=0.0)

    @property
    def peak_pss_mb(self) -> float:
        return max((s.pss_mb for s in self.samples), default=0.0)

    def peak_fds(self) -> dict[int, int]:
        """The most descriptors each process held at once (workers: about 2 per open stream)."""
        peaks: dict[int, int] = {}
        for sample in self.samples:
            for pid, count in sample.fds.items():
                peaks[pid] = max(peaks.get(pid, 0), count)
        return peaks
