"""The benchmark (``make bench``): the router against its vendor called directly, side by side.

Not a test: pytest ignores this package (.pytest.ini). ``python -m tests.bench`` starts a vendor
and the router exactly as in production (``gunicorn -c gunicorn.conf.py wsgi:app``, one gevent
worker per CPU, LOG_LEVEL=info, the production default), then measures on loopback only:

- non-stream calls/s and latency p50/p90/p99/max at concurrency 1, 16 and 64, router and direct,
  with ``ab -k`` (ApacheBench; else ``wrk -t1``, else a gevent generator in its own process:
  load.py, loadgen.py), each row checked against Little's law (mean latency x calls/s =
  concurrency, within 10%: a generator whose figures break it is flagged), with the connections
  each server process held halfway through and the calls each router worker made; ``--nginx``
  adds rows through nginx in front of the router;
- K = 50, 500 and 1,000 concurrent streams of 20 chunks 20 ms apart, router and direct, held by a
  stream client in its own process (streamclient.py, epoll engine in streamloop.py); stats.py
  defines every figure (TTFC, incremental, stall, ok, served/open);
- 1,000 streams held of 20 chunks 100 ms apart (``--held-streams``, ``--held-interval``);
- ``POST /v1/responses`` whole (c = 1, 16) and streamed (K = 50, 500) through the router, beside
  chat's rows; skipped with a note when the router answers it 404;
- ``POST /v1/messages`` (Anthropic) the same way (``--messages-concurrency``, ``--messages-streams``):
  the same conversation, checked to carry chat's text, its streams counted by their text deltas
  (``--dialect=messages``); the summary gives its router CPU per call as a ratio to chat's at c = 1
  and 16 (goal: at most 1.15x) and says whether its streams stay incremental;
- the router's CPU to start a stream and per relayed event (``--cost-streams``): bursts of
  streams of 1 and of 41 chunks, fitted to CPU per stream = start + events x per event; and,
  like with like, CPU per call of a whole call and of a stream whose events come at once, both
  with ab on a new connection per call (the stream client opens one per stream);
- the router's RSS (master + workers) idle, under load and after load, its CPU time per call,
  and the CPU share of the vendor and of the load generators, to show which one set the pace
  (procs.py reads /proc);

prints the tables and the goals of the performance issue as ``today -> goal -> measured``
(report.py, summary.py) and writes JSON to tests/bench/results/.

``--repeat N`` runs all of it N times, each with a fresh vendor and router, writes each run's
JSON as a single run does, and reports every figure as the median of the runs with its range
(``make bench`` figures in the README: ``--repeat 3``).

``--peers portkey,litellm`` measures other gateways in the same run on the same vendor, with the
same load generators, interleaved with the router and the direct path (every path at one load,
then the next load): the Portkey gateway from npm and the LiteLLM proxy from PyPI, installed on
first use into ``~/.cache/router-bench`` (peers.py says how each is installed, started and
addressed; a peer that cannot be installed within ``--peer-install-timeout`` is skipped, saying
why). Not part of ``make test``; ``make bench-peers`` runs ``--peers portkey,litellm --repeat 3``.

``--failover`` runs the failover benchmark instead (failover.py, failstats.py): two vendors at
constant mixed load, one of them failing from t = 10 s to t = 40 s (HTTP 500, then a stall, then
streams dropped after their first content chunk), with client-visible errors, added latency, the
calls the failing vendor still got per cooldown period and the time until it has its share back.

``--cache`` runs the cache benchmark instead (cache.py): 50 agent sessions of 10 growing turns
through 4 keys of one model, the vendor emulating a prompt cache per key, with affinity on and
off: the cache hit ratio of each, how often a session changed keys, and the routing cost.

``--soak SECONDS`` runs a mixed load instead (wrk at c=16 beside 100 streams held) and samples
RSS for growth. ``--quick`` shortens every measurement (and the failover timeline) for a smoke
run. ``--help`` lists every option.

The vendor is vendor.py, a lean epoll server answering like tests/support/fake_vendor.py; the fake itself
(``--vendor-server fake``) spends ~50 µs of CPU per stream event and at 1,000 streams would be
the bottleneck of the direct path on a 2-core machine.
"""
