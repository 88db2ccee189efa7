"""gunicorn settings for the router. Every value is read from the environment here, with its reason.

This file runs in the gunicorn master before any worker forks, so it imports nothing heavy:
never the app, never requests (STACK.md rule 3). Start: ``gunicorn -c gunicorn.conf.py wsgi:app``.
"""

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time

from gunicorn.glogging import Logger


def _int(name: str, default: int, minimum: int = 0) -> int:
    value = os.environ.get(name, "").strip()
    try:
        number = int(value) if value else default
    except ValueError:
        raise SystemExit(f"{name} must be a whole number; got {value!r}") from None
    if number < minimum:
        raise SystemExit(f"{name} must be at least {minimum}; got {value!r}")
    return number


# All interfaces, so nginx or a container runtime can reach it; PORT as in the contract.
bind = f"0.0.0.0:{_int('PORT', 8082, minimum=1)}"

# gevent workers: each handles many requests at once as greenlets, which is what a router that
# mostly waits on vendors needs. One worker per CPU by default; WEB_CONCURRENCY overrides.
worker_class = "gevent"
workers = _int("WEB_CONCURRENCY", multiprocessing.cpu_count(), minimum=1)
# Requests (greenlets) one worker holds at once; open streams count. The app sizes its vendor
# connection pool from the same variable, so no pooled connection is thrown away under load.
worker_connections = _int("WORKER_CONNECTIONS", 1000, minimum=1)

# With gevent this is a watchdog for a worker whose event loop is blocked, not a request timeout:
# long streams are unaffected as long as the loop runs (STACK.md rule 4). Request time limits are
# the app's UPSTREAM_* settings.
timeout = _int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, SIGHUP reloads and worker restarts, running streams get this long to finish before
# the worker is killed (STACK.md rule 5): long enough for a typical completion.
graceful_timeout = _int("GRACEFUL_TIMEOUT", 120)
# Idle keep-alive connections are held this long. Short, because on SIGTERM or SIGHUP a worker
# waits for its idle connections as for running requests: with a long keep-alive every deploy
# would stall that long. nginx's upstream keepalive_timeout must be shorter (configs/nginx uses
# 4 s), so nginx closes an idle connection before gunicorn does and never reuses a closing one.
keepalive = _int("KEEPALIVE", 5)

# Never preload with gevent: modules imported before the fork miss monkey-patching (rule 2).
preload_app = False
# gunicorn >= 25.1 opens a control socket at a fixed path by default; several instances on one
# machine would fight over it (rule 21).
control_socket_disable = True

# The app writes one access line per request itself (with vendor, model, attempts, and the whole
# duration of streams), so gunicorn's own access log is off unless asked for.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").strip() or "info"
proc_name = "generative-api-router"


class _JSONLines(logging.Formatter):
    """gunicorn's own lines (start, workers, timeouts) in the shape of the app's JSON lines."""

    # A copy of the app's shape, not an import of it: importing app.logs would import the app
    # package, and with it requests, into the master (rule 3).
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": "-",
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class _JSONLogger(Logger):
    """gunicorn's logger with its usual handlers (stderr, GUNICORN_ACCESS_LOG), writing JSON lines."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(_JSONLines())


# LOG_FORMAT=json: every line the process writes is a JSON object, gunicorn's too, so a log
# shipper never meets a line it cannot parse.
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    logger_class = _JSONLogger

_OWN_METRICS_PREFIX = "router-metrics-"
# Prometheus multiprocess mode: workers write samples to files in this directory and /metrics
# adds them up. It must be in the environment before a worker imports prometheus_client, so it
# is set here, in the master, before the fork; a private temporary directory unless given.
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
    """Drop a dead worker's live gauges (in-flight streams), keep its counters."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
