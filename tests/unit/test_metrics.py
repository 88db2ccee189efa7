"""The exporter's HTTP metrics through Flask's test client: what may and may not become a label."""

from __future__ import annotations

import gc
import logging
import threading

from prometheus_client import CollectorRegistry

from app.budgets.limits import BudgetLimit
from app.metrics import RouterMetrics, _every
from tests.support.processes import wait_until
from tests.support.prometheus import parse


def test_unknown_method_is_answered_but_never_a_label(flask_client):
    for method in ("BREW", "XYZZY"):
        response = flask_client.open("/v1/chat/completions", method=method)
        assert response.status_code == 405
        assert response.get_json()["error"]["code"] == "method_not_allowed"
    flask_client.open("/nowhere", method="FROB")
    flask_client.delete("/health")

    metrics = parse(flask_client.get("/metrics").get_data(as_text=True))
    assert metrics.label_values("method") == {"DELETE"}
    assert metrics.value("router_http_unknown_method_requests_total") == 3
    assert metrics.value("flask_http_request_total", method="DELETE", status="405") == 1


def test_routes_not_raw_paths_label_the_request_metrics(flask_client):
    flask_client.get("/v1/models/gpt-4o")
    flask_client.get("/v1/models/no-such-model")
    flask_client.get("/v1/anything/at/all")
    metrics = parse(flask_client.get("/metrics").get_data(as_text=True))
    assert metrics.label_values("url_rule") == {"/v1/models/<path:model_id>", "None"}
    assert metrics.value("flask_http_request_duration_seconds_count", url_rule="/v1/models/<path:model_id>") == 2


class _Cooling:
    """Stands in for the selector as the source of the count: the gauge's follower is under test."""

    def __init__(self) -> None:
        self.value = 0

    def count(self) -> dict[str, int]:
        return {"openai": self.value, "gemini": 1}


def test_cooling_gauge_follows_the_count_with_no_traffic_and_stops_when_its_source_is_gone():
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    source = _Cooling()
    before = set(threading.enumerate())
    metrics.follow_cooling(source.count, every=0.05)
    (follower,) = {t for t in threading.enumerate() if t.name == "cooling-gauge"} - before

    def shown(vendor: str | None = None) -> float | None:
        if vendor is None:
            return registry.get_sample_value("router_cooling_combinations")
        return registry.get_sample_value("router_vendor_cooling_combinations", {"vendor": vendor})

    wait_until(lambda: shown() == 1, timeout=5)
    source.value = 3  # e.g. learned from another worker: no request passes here
    wait_until(lambda: shown() == 4 and shown("openai") == 3 and shown("gemini") == 1, timeout=5)
    source.value = 0  # the cooldowns ended
    wait_until(lambda: shown() == 1 and shown("openai") == 0, timeout=5)

    del source
    gc.collect()
    follower.join(timeout=5)
    assert not follower.is_alive()


def test_budget_gauges_are_written_in_the_background_and_the_writer_stops_with_its_metrics():
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    limit = BudgetLimit(1000, "tokens", "day")
    before = set(threading.enumerate())
    metrics.budgets_configured({"web": (limit,)}, every=0.05)
    (writer,) = {t for t in threading.enumerate() if t.name == "budget-gauges"} - before
    labels = {"client": "web", "unit": "tokens", "window": "day"}

    def shown(name: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert shown("router_budget_spent") == 0
    metrics.budget_spent_now("web", limit, 120.0, 1_800_000_000.0)
    metrics.budget_spent_now("web", limit, 140.0, 1_800_000_000.0)  # the latest is the one written
    wait_until(lambda: shown("router_budget_spent") == 140, timeout=5)
    assert shown("router_budget_resets_at_seconds") == 1_800_000_000

    del metrics
    gc.collect()
    writer.join(timeout=5)
    assert not writer.is_alive()


def test_a_background_writer_that_fails_says_so_once_and_keeps_writing(caplog):
    calls: list[int] = []

    def step() -> bool:
        calls.append(1)
        if len(calls) in (2, 3, 4):
            raise OSError("the metrics file is gone")
        return len(calls) < 6

    before = set(threading.enumerate())
    with caplog.at_level(logging.ERROR, logger="app.metrics"):
        _every(0.01, step, "test-gauges")
        (writer,) = {t for t in threading.enumerate() if t.name == "test-gauges"} - before
        writer.join(timeout=5)
    assert len(calls) == 6  # went on after the failures, and stopped when told
    failures = [record for record in caplog.records if "writing the gauges failed" in record.getMessage()]
    assert len(failures) == 1
