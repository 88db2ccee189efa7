"""gunicorn's server hooks: Prometheus multiprocess files, SIGHUP reloads checked first, and the
slots of the connection balance (app/server/balance.py).

Named in gunicorn.conf.py; they run in the master (``on_starting``, ``on_exit``, ``child_exit``,
``when_ready``, ``pre_fork``) or in a worker after it started (``post_worker_init``).
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import subprocess
import sys
import tempfile

from app.server import balance

__all__ = [
    "child_exit",
    "on_exit",
    "on_starting",
    "post_worker_init",
    "pre_fork",
    "use_metrics_directory",
    "when_ready",
]

_OWN_METRICS_PREFIX = "router-metrics-"


def use_metrics_directory() -> None:
    """Give Prometheus multiprocess mode its directory: a private temporary one unless given.

    Workers write samples to files in it and /metrics adds them up. It must be in the
    environment before a worker imports prometheus_client, so the master sets it before the fork.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_OWN_METRICS_PREFIX)


def on_starting(server):
    """Start from empty metric files: samples of a previous run's workers would be summed in."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def on_exit(server):
    """Remove the metrics directory this file created (never one the operator gave)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    parent, name = os.path.split(directory)
    if name.startswith(_OWN_METRICS_PREFIX) and parent == tempfile.gettempdir():
        shutil.rmtree(directory, ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (in-flight streams), keep its counters; free its balance slot."""
    balance.release_slot(worker)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def pre_fork(server, worker):
    """Give the worker about to fork a slot for its connection count (app/server/balance.py)."""
    worker.balance_slot = balance.assign_slot(server.WORKERS.values())


def when_ready(server):
    """Make SIGHUP check the config files first, and refuse a reload the workers would not survive.

    gunicorn's reload forks new workers and stops the old ones at once, with no hook that can say
    no, and a new worker that cannot load the config halts the whole server. So the arbiter's reload
    is wrapped: a refused reload changes nothing, and the running workers keep their config.
    """
    reload = server.reload

    def checked_reload() -> None:
        problem = _config_problem()
        if problem is not None:
            server.log.error("reload refused, the workers keep serving the last good config: %s", problem)
            _count_reload("failed")
            return
        _count_reload("ok")
        reload()

    server.reload = checked_reload


# Loading the config takes a second or two; the master handles no signals meanwhile.
_CHECK_SECONDS = 60


def _config_problem() -> str | None:
    """check-config's message when the config files would not load now; None when they would."""
    # In a child process, which reads the same environment and files a new worker would: the
    # master must not import the app.
    command = [sys.executable, "-m", "app", "check-config"]
    try:
        check = subprocess.run(  # noqa: S603 -- a fixed command line
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_CHECK_SECONDS
        )
    except subprocess.TimeoutExpired:
        return f"check-config did not finish within {_CHECK_SECONDS} s"
    if check.returncode == 0:
        return None
    lines = check.stderr.strip().splitlines() or [f"check-config exited with {check.returncode}"]
    return lines[-1].removeprefix("config error: ")


def post_worker_init(worker):
    """Show the reload counter at 0 from the start: a missing series is no data, not zero, to an alert.

    Then set aside what the worker loaded for good (modules, the app, its catalog) from Python's
    garbage collector: a full collection walks every tracked object, and in a worker the app's own
    hundreds of thousands of them made each one a pause of 20-60 ms under load, during which every
    request of the worker waits. Frozen after one last collection, they are never walked again, and
    a full collection takes ~1 ms (measured with gc.callbacks at c=64). Raising the collection
    thresholds as well cut the number of young collections by ten but made each ~2 ms, with no gain
    in the latency tail, so they stay at Python's defaults.
    """
    for result in ("ok", "failed"):
        _reloads_counter().labels(result)
    gc.collect()
    gc.freeze()


def _count_reload(result: str) -> None:
    _reloads_counter().labels(result).inc()


@functools.cache
def _reloads_counter():
    # Imported on first use, like in child_exit: in the master that is the first reload, after the
    # first workers have forked; in a worker it is after gevent's patching.
    from prometheus_client import Counter

    return Counter(
        "router_config_reloads",
        "SIGHUP reloads, by result: ok (config checked, new workers started) or failed (config "
        "refused, the running workers kept the last good one).",
        ["result"],
        registry=None,
    )
