"""The chaos run (``make chaos``): a deployment under mixed load while things break, and whether clients notice.

Not a test: pytest ignores this package (.pytest.ini). ``python -m tests.chaos [--minutes N]``
(default 10) starts, on loopback only (cluster.py):

- one fake vendor process (tests/support/fake_vendor.py) playing three vendors: ``alpha`` (two
  keys), ``beta`` and ``flaky``, every stream 8 content events 50 ms apart;
- one real ``redis-server``, the store of rate limits and cooldowns of both instances;
- two router instances (``gunicorn -c gunicorn.conf.py wsgi:app``, 2 gevent workers each) with
  the same config files;
- a real nginx with configs/nginx/router.conf, its upstream holding both instances;

then runs for N minutes (clients.py, a process of its own) mixed clients through nginx: whole and
streamed chat completions (some pinned to alpha's model), Responses, embeddings and Anthropic
Messages, streams whose client leaves after the first event, streams read slowly, bodies sent
slowly. Meanwhile (faults.py) ``flaky`` flaps on a schedule of 10 s phases: HTTP 500, a stall
before the answer, streams cut mid-way, comment-only pauses longer than the router's read timeout,
200 with an error body, streams stalled mid-way, an error event mid-stream, each followed by a
healthy phase; and every minute one operator event, in turn: one of alpha's keys revoked at the
vendor (401), SIGHUP with a broken config (fixed again 5 s later), Redis killed and restarted, one
instance restarted (SIGTERM drain, then started again on its port), SIGHUP with a changed config.

It measures (observe.py) per worker every 10 s: RSS, open descriptors and TCP connections (from
nginx: one greenlet each, the stand-in for a greenlet count; to vendors; to Redis), and each
instance's /metrics (streams in flight); and reads every log (router JSON logs, nginx access and
error logs). report.py classifies every client request (ok, left on purpose, limited,
unavoidable, avoidable), and prints Markdown tables with the verdict: DONE when there is no
avoidable error, no worker's memory grows after the first two minutes, no traceback is logged,
streams and connections in flight are back to 0 after the load, and no process is left behind.
The exit status is 0 only then. Everything lands in tests/chaos/results/<time>/ (git-ignored):
report.md, the client rows, samples, the timeline, and the cluster's logs.

``--minutes 2 --event-every 20`` is a short run (every event once) for development.
"""
