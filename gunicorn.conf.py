"""gunicorn settings for the router: each value, where it comes from, and why.

This file runs in the gunicorn master before any worker forks, so it imports only the settings
reader (app.settings) and the server package (app/server: the worker class, its JSON logger, the
hooks), none of which imports Flask or requests: a module imported here would be imported before
gevent's monkey-patching in every worker. Start: ``gunicorn -c gunicorn.conf.py wsgi:app``.
"""

import multiprocessing

from app.environment import SettingsError
from app.server.balance import create_table
from app.server.hooks import (  # noqa: F401 -- gunicorn finds its hooks by name in this file
    child_exit,
    on_exit,
    on_starting,
    post_worker_init,
    pre_fork,
    use_metrics_directory,
    when_ready,
)
from app.server.logger import JSONLogger
from app.server.worker import RouterWorker
from app.settings import ServerSettings

try:
    server = ServerSettings.from_env()
except SettingsError as problem:
    raise SystemExit(str(problem)) from None

# All interfaces, so nginx or a container runtime can reach it; PORT as in the contract.
bind = f"0.0.0.0:{server.port}"

# gevent workers (worker_class, below): each handles many requests at once as greenlets, which is
# what a router that mostly waits on vendors needs. One per CPU by default; WEB_CONCURRENCY overrides.
workers = server.workers or multiprocessing.cpu_count()
# Requests (greenlets) one worker holds at once (WORKER_CONNECTIONS); open streams count. The app
# sizes its vendor connection pool from the same setting, so no pooled connection is thrown away.
worker_connections = server.worker_connections

# GUNICORN_TIMEOUT. With gevent this is a watchdog for a worker whose event loop is blocked, not a
# request timeout: long streams are unaffected as long as the loop runs. Request time limits are
# the app's UPSTREAM_* and REQUEST_TIMEOUT settings.
timeout = server.timeout
# GRACEFUL_TIMEOUT. On SIGTERM, SIGHUP reloads and worker restarts, running streams get this long
# to finish before the worker is killed: long enough for a typical completion.
graceful_timeout = server.graceful_timeout
# KEEPALIVE. Idle keep-alive connections are held this long. Short by default, because on SIGTERM
# or SIGHUP a worker waits for its idle connections as for running requests: with a long
# keep-alive, clients that keep idle connections would stall every deploy that long. Behind nginx,
# set it far above nginx's upstream keepalive_timeout (docker-compose.yml: 30 s against 4 s), so
# nginx closes an idle connection long before gunicorn would and never reuses a closing one, even
# after the machine stalled for seconds; nginx then bounds the drain, not KEEPALIVE.
keepalive = server.keepalive

# Never preload with gevent: modules imported before the fork miss monkey-patching.
preload_app = False
# gunicorn >= 25.1 opens a control socket at a fixed path by default; several instances on one
# machine would fight over it.
control_socket_disable = True

# The app writes one access line per request itself (with vendor, model, attempts, and the whole
# duration of streams), so gunicorn's own access log is off unless GUNICORN_ACCESS_LOG names one.
accesslog = server.access_log
errorlog = "-"
# LOG_LEVEL, the same setting the app's own lines follow.
loglevel = server.log_level
proc_name = "generative-api-router"
# LOG_FORMAT=json: gunicorn's own lines are JSON objects like the app's.
if server.log_format == "json":
    logger_class = JSONLogger

# OpenAI JSON for requests gunicorn refuses itself, fewer system calls per response, and a worker
# that waits for config files being edited instead of halting the server (app/server/worker.py).
worker_class = RouterWorker

# BALANCE_CONNECTIONS (on) and BALANCE_ACCEPT_WAIT (0.1 s). Keep-alive connections (a client's
# pool, nginx's upstream keepalive) stay with the worker that accepted them, and gevent workers
# accept greedily, so one worker could hold most of them and its requests wait for its one core.
# With this on, each worker counts its connections in memory shared with the others (made here,
# before the workers fork; slots handed out by the pre_fork hook): a worker leaves a new
# connection to a less loaded one for up to BALANCE_ACCEPT_WAIT seconds (then takes it, so a
# blocked or booting sibling delays a connection by that much at most), and one holding more than
# one connection above the least loaded closes a keep-alive connection after its answer
# (Connection: close; the client reconnects and lands on the other). app/server/balance.py.
RouterWorker.configure(
    balance_connections=server.balance_connections and workers > 1,
    balance_accept_wait=server.balance_accept_wait,
)
if server.balance_connections and workers > 1:
    create_table()

# Prometheus multiprocess mode needs its directory in the environment before the workers fork.
use_metrics_directory()
