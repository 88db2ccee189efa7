"""Prometheus metrics: the exporter's HTTP metrics plus the router's own, all in one place.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker imports prometheus_client
(gunicorn.conf.py sees to it), every worker writes its samples to files there, and ``/metrics``
sums them, so the numbers are the whole server's whatever worker answers the scrape. Labels are
only ever configured names (vendor, model, credential label, client name), route patterns and
fixed sets of words (outcome, status class, phase): nothing a client sends can create a new time
series.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_flask_exporter import PrometheusMetrics

from app.catalog import Combination
from app.usage import token_counts

__all__ = ["RouterMetrics", "init_metrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STREAM_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# The only values the exporter's ``method`` label may take (RFC 9110's methods and PATCH).
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

_pid = os.getpid()


def _process_id() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


# In multiprocess mode every sample update asks os.getpid() to notice a fork: a system call each,
# about 17 per request. The pid is cached instead and refreshed in every forked child. Set before
# any metric exists, since each value takes the class current when it is created.
if getattr(values.ValueClass, "_multiprocess", False):
    os.register_at_fork(after_in_child=_forked)
    values.ValueClass = values.MultiProcessValue(_process_id)


class RouterMetrics:
    """The router's own metrics; each method records one thing that happened."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.upstream_requests = Counter(
            "router_upstream_requests",
            "Calls to vendors, by outcome (ok, vendor_error, timeout, network, bad_answer, cancelled: a hedge's "
            "loser or a call whose client left) and status class.",
            ["vendor", "model", "outcome", "status_class"],
            registry=registry,
        )
        self.upstream_ttfb = Histogram(
            "router_upstream_ttfb_seconds",
            "Successful vendor calls: from sending the request to the whole answer (read and checked), "
            "or to a stream's first event.",
            ["vendor", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.stream_duration = Histogram(
            "router_stream_duration_seconds",
            "Whole duration of relayed streams, by how they ended.",
            ["vendor", "model", "outcome"],
            buckets=_STREAM_BUCKETS,
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            "router_streams_in_flight",
            "Streams being relayed now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.selections = Counter(
            "router_selections",
            "Combinations chosen by the selector (one per attempt).",
            ["vendor", "model", "credential"],
            registry=registry,
        )
        self.failovers = Counter(
            "router_failovers",
            "Attempts that failed and were followed by another attempt, by the failed combination.",
            ["vendor", "model"],
            registry=registry,
        )
        self.attempts = Histogram(
            "router_attempts_per_request",
            "Attempts made for one chat request.",
            buckets=(1, 2, 3, 4, 5, 8),
            registry=registry,
        )
        self.hedges = Counter(
            "router_hedges",
            "Requests that started a hedge (a second attempt while the first was still waiting), by whether "
            "the hedge's answer was used (won) or not (lost).",
            ["result"],
            registry=registry,
        )
        self.cooling = Gauge(
            "router_cooling_combinations",
            "Combinations the selector skips now after a failure, shared ones included (highest among live workers).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Per vendor, beside the configured count, so an alert can tell "every combination of
        # this vendor is cooling down" (the vendor is out of rotation) from "some are".
        self.vendor_cooling = Gauge(
            "router_vendor_cooling_combinations",
            "Combinations of a vendor the selector skips now after a failure (the highest count among live workers).",
            ["vendor"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.vendor_combinations = Gauge(
            "router_vendor_combinations",
            "Combinations configured for a vendor (credentials x models).",
            ["vendor"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Summed over live workers it is the server's capacity, the ceiling for open streams.
        self.connections_limit = Gauge(
            "router_worker_connections_limit",
            "Requests (streams included) the live workers may hold at once: WORKER_CONNECTIONS summed over them.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.client_disconnects = Counter(
            "router_client_disconnects",
            "Clients that went away before their answer was complete, by phase (waiting, streaming).",
            ["phase"],
            registry=registry,
        )
        self.tokens = Counter(
            "router_tokens",
            "Tokens reported by vendors in usage, by kind (prompt, completion, cached_input: the part of "
            "prompt read from the vendor's cache) and client.",
            ["vendor", "model", "kind", "client"],
            registry=registry,
        )
        self.client_requests = Counter(
            "router_client_requests",
            "Requests to /v1 by client name (anonymous without a proven key), route pattern and status class.",
            ["client", "route", "status_class"],
            registry=registry,
        )
        self.unknown_methods = Counter(
            "router_http_unknown_method_requests",
            "Requests with a method outside RFC 9110's and PATCH (answered 404/405, left out of flask_http_*).",
            registry=registry,
        )
        # Budgets: livemax, because with Redis every worker sees the one shared count, and with
        # memory:// each worker enforces its own count: the fullest worker is the one to watch.
        self.budget_spent = Gauge(
            "router_budget_spent",
            "Spent in the current window of a client's budget (running calls' reservations included), in its unit.",
            ["client", "unit", "window"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.budget_limit = Gauge(
            "router_budget_limit",
            "A client's budget limit per window, in its unit (tokens or usd).",
            ["client", "unit", "window"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.budget_resets_at = Gauge(
            "router_budget_resets_at_seconds",
            "When the window router_budget_spent counts in ends (Unix time): after it, that value is stale.",
            ["client", "unit", "window"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.budget_rejections = Counter(
            "router_budget_rejections",
            "Calls refused (429) because the client's budget was spent.",
            ["client"],
            registry=registry,
        )
        self.budget_cutoffs = Counter(
            "router_budget_cutoffs",
            "Streams cut because the client's budget ran out while they were relayed.",
            ["client"],
            registry=registry,
        )
        self.overhead = Histogram(
            "router_overhead_seconds",
            "Time a chat request spent in the router itself, not waiting for a vendor (to the first byte for streams).",
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        # Label children by (metric, label values): .labels() validates and converts its labels
        # on every call; the values here are configured names and fixed words, so this stays small.
        self._series: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._budget_now: dict[tuple[str, str, str], tuple[float, float]] = {}  # spent, resets_at: not yet written
        self._resets_at: dict[Any, float] = {}  # router_budget_resets_at_seconds as last set, per series

    def series(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per set of label values."""
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def configured(self, worker_connections: int, combinations: Iterable[Combination]) -> None:
        """Publish this worker's capacity and each vendor's combinations (none cooling yet)."""
        self.connections_limit.set(worker_connections)
        for vendor, count in Tally(combination.vendor.name for combination in combinations).items():
            self.vendor_combinations.labels(vendor).set(count)
            self.vendor_cooling.labels(vendor).set(0)

    def follow_cooling(self, count: Callable[[], dict[str, int]], every: float = 1.0) -> None:
        """Keep the cooling gauges at ``count()`` (cooling combinations per vendor), read in the
        background every ``every`` s.

        Cooldowns end, and other workers' start, while this worker serves nothing: a value written
        only when a request passes would go stale. ``count`` must be a bound method.
        """
        source = weakref.WeakMethod(count)
        total, per_vendor = self.cooling, self.vendor_cooling
        shown: dict[str, int] | None = None

        def show() -> bool:
            nonlocal shown
            method = source()
            if method is None:
                return False
            counts = method()
            if counts != shown:  # a gauge write is wasted when nothing changed
                total.set(sum(counts.values()))
                for vendor, value in counts.items():
                    per_vendor.labels(vendor).set(value)
                shown = counts
            return True

        _every(every, show, "cooling-gauge")

    def selected(self, combination: Combination) -> None:
        vendor, model = combination.vendor.name, combination.model.id
        self.series(self.selections, vendor, model, combination.credential.label).inc()

    def attempted(self, combination: Combination, outcome: str, status: int | None, ttfb: float | None) -> None:
        status_class = f"{status // 100}xx" if status else "none"
        vendor, model = combination.vendor.name, combination.model.id
        self.series(self.upstream_requests, vendor, model, outcome, status_class).inc()
        if ttfb is not None:
            self.series(self.upstream_ttfb, vendor, model).observe(ttfb)

    def failed_over(self, combination: Combination) -> None:
        self.series(self.failovers, combination.vendor.name, combination.model.id).inc()

    def counted_tokens(self, combination: Combination, usage: object, client: str) -> None:
        counts = token_counts(usage)
        if counts is None:
            return
        vendor, model = combination.vendor.name, combination.model.id
        kinds = (("prompt", counts.input), ("completion", counts.output), ("cached_input", counts.cached_input))
        for kind, value in kinds:
            if value:
                self.series(self.tokens, vendor, model, kind, client).inc(value)

    def budgets_configured(self, budgets: dict[str, tuple[Any, ...]], every: float = 1.0) -> None:
        """Publish every client's limits (and nothing spent in this worker yet), and write what
        calls report spent (``budget_spent_now``) every ``every`` s from then on."""
        for client, limits in budgets.items():
            for limit in limits:
                self.budget_limit.labels(client, limit.unit, limit.window).set(limit.amount)
                self.budget_spent.labels(client, limit.unit, limit.window).set(0)
            self.budget_rejections.labels(client)
            self.budget_cutoffs.labels(client)
        owner = weakref.ref(self)

        def write() -> bool:
            metrics = owner()
            if metrics is None:
                return False
            metrics._write_budget_gauges()
            return True

        _every(every, write, "budget-gauges")

    def budget_spent_now(self, client: str, limit: Any, spent: float, resets_at: float) -> None:
        # Twice a call for every limit of the client: only noted here. Writing a gauge (a lock
        # and a write to its file under gunicorn) cost ~10 us a call; the latest value of each
        # series is written in the background instead, within ``every`` s.
        self._budget_now[(client, limit.unit, limit.window)] = (spent, resets_at)

    def _write_budget_gauges(self) -> None:
        noted = self._budget_now
        while noted:
            labels, (spent, resets_at) = noted.popitem()  # a write that fails loses only its own
            self.series(self.budget_spent, *labels).set(spent)
            series = self.series(self.budget_resets_at, *labels)
            if self._resets_at.get(series) != resets_at:  # a window's end changes once per window
                self._resets_at[series] = resets_at
                series.set(resets_at)

    def budget_rejected(self, client: str) -> None:
        self.series(self.budget_rejections, client).inc()

    def budget_cut(self, client: str) -> None:
        self.series(self.budget_cutoffs, client).inc()

    def stream_ended(self, combination: Combination, outcome: str, seconds: float) -> None:
        self.series(self.stream_duration, combination.vendor.name, combination.model.id, outcome).observe(seconds)


def _every(every: float, step: Callable[[], bool], name: str) -> None:
    """Call ``step`` every ``every`` s in the background until it returns False.

    A thread (a greenlet under gevent). ``step`` should hold its objects weakly and return False
    once they are garbage, so apps built by tests leave no thread behind.
    """

    def loop() -> None:
        failing = False
        while True:
            try:
                if not step():
                    return
                failing = False
            except Exception:
                if not failing:  # once per run of failures, not every ``every`` s
                    log.exception("%s: writing the gauges failed; trying again every %g s", name, every)
                failing = True
            time.sleep(every)

    threading.Thread(target=loop, name=name, daemon=True).start()


def init_metrics(app: Flask, worker_connections: int, combinations: Iterable[Combination]) -> RouterMetrics:
    """Serve /metrics on ``app`` and return the router's metrics to record into.

    ``worker_connections`` and ``combinations`` are published at once, so capacity and the
    per-vendor series exist before the first request.
    """
    # A registry per app, not the global one: tests build many apps in one process. Under
    # gunicorn the exporter ignores it and reads every worker's files instead.
    registry = CollectorRegistry(auto_describe=True)
    PrometheusMetrics(
        app,
        registry=registry,
        group_by="url_rule",  # the route, never the raw path: /v1/anything must not be a label
        defaults_prefix="flask",
        buckets=_LATENCY_BUCKETS,
    )
    metrics = RouterMetrics(registry)
    metrics.configured(worker_connections, combinations)

    @app.before_request
    def leave_unknown_methods_out() -> None:
        # The exporter labels its HTTP metrics with the raw method token, which the client picks
        # (gunicorn passes any uppercase token): each new one would be a new series. Such requests
        # still get their 404/405 (routing errors are raised after before_request hooks); they are
        # counted without a label instead.
        if request.method not in STANDARD_METHODS:
            request.prom_do_not_track = True  # the exporter's own per-request opt-out
            metrics.unknown_methods.inc()

    return metrics
