"""The benchmark (``make bench``): the router against its vendor called directly, side by side.

Not a test: pytest ignores this package (.pytest.ini). ``python -m tests.bench`` starts a vendor
and the router exactly as in production (``gunicorn -c gunicorn.conf.py wsgi:app``, one gevent
worker per CPU, LOG_LEVEL=info, the production default), then measures on loopback only:

- non-stream calls/s and latency p50/p99 at concurrency 1, 16 and 64, router and direct, with
  ``wrk -t1`` (load.py) or, without wrk, a gevent generator in its own process (loadgen.py);
- K = 50, 500 and 1,000 concurrent streams of 20 chunks 20 ms apart, router and direct, held by a
  stream client in its own process (streamclient.py, epoll engine in streamloop.py); stats.py
  defines every figure (TTFC, incremental, stall, ok, served/open);
- the router's RSS (master + workers) idle, under load and after load, its CPU time per call,
  and the CPU share of the vendor and of the load generators, to show which one set the pace
  (procs.py reads /proc);

prints a table with the goals of issue 6 (report.py) and writes JSON to tests/bench/results/.
``--soak SECONDS`` runs a mixed load instead (wrk at c=16 beside 100 streams held) and samples
RSS for growth. ``--help`` lists every option.

The vendor is vendor.py, a lean epoll server answering like tests/fake_vendor.py; the fake itself
(``--vendor-server fake``) spends ~50 µs of CPU per stream event and at 1,000 streams would be
the bottleneck of the direct path on a 2-core machine.
"""
